# backupmx: secondary MX daemon, catch-all mailbox server, puller, queue tool.
#
#   make            build bin/backupmx (and the test helpers)
#   make run        install build deps if missing, build, run with the example config
#   make check      install deps if missing, build, run every suite, then again under ASan/UBSan
#   make SAN=1      build the sanitizer variant into build-san/ and bin-san/
#
# Sources are picked up by directory so that adding a file needs no Makefile edit.

VERSION := 0.1.0
.DEFAULT_GOAL := all

ifeq ($(SAN),1)
CC      := clang
BUILD   := build-san
BIN     := bin-san
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
OPT     := -O1 -g
else
CC      ?= cc
BUILD   := build
BIN     := bin
SANFLAGS :=
OPT     := -O2 -g
endif

PKGS     := libevent_openssl libevent libssl libcrypto libconfuse libcares
CPPFLAGS += -D_GNU_SOURCE -DBMX_VERSION='"$(VERSION)"' -Ilib -Ibackupmx -Icatchall
CFLAGS   += -std=c11 -Wall -Wextra -Werror $(OPT) $(SANFLAGS) \
            $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDFLAGS  += $(SANFLAGS)
LDLIBS   += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -ldb-5.3 -lcrypt -lpthread

LIB_SRC  := $(wildcard lib/*.c)
BMX_SRC  := $(filter-out backupmx/main.c backupmx/bmxq.c,$(wildcard backupmx/*.c))
CA_SRC   := $(wildcard catchall/*.c)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
HELPER_SRC := $(wildcard tests/helpers/*.c)

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
BMX_OBJ  := $(BMX_SRC:%.c=$(BUILD)/%.o) $(CA_SRC:%.c=$(BUILD)/%.o)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
HELPERS  := $(HELPER_SRC:tests/helpers/%.c=$(BUILD)/tests/%)

.PHONY: all deps test-deps run check check-suites clean
PROGS    := $(BIN)/backupmx $(if $(wildcard backupmx/bmxq.c),$(BIN)/bmxq)
# fetchd, the puller. Debian's libetpan.pc leaks -specs=/usr/share/dpkg/no-pie-link.specs
# (non-PIE with gcc, a failure without dpkg-dev): strip it.
FETCHD_SRC  := $(wildcard fetchd/*.c)
FETCHD_OBJ  := $(FETCHD_SRC:%.c=$(BUILD)/%.o)
ETPAN_LIBS  := $(shell pkg-config --libs libetpan 2>/dev/null | sed 's/-specs=[^ ]*//g')
PROGS       += $(if $(FETCHD_SRC),$(BIN)/fetchd)

$(BIN)/fetchd: $(FETCHD_OBJ) $(BUILD)/lib/log.o $(BUILD)/lib/units.o $(BUILD)/lib/conf_load.o
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(ETPAN_LIBS)

all: $(PROGS) $(UNIT_BIN) $(HELPERS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BIN)/backupmx: $(BUILD)/backupmx/main.o $(BMX_OBJ) $(LIB_OBJ)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/bmxq: $(BUILD)/backupmx/bmxq.o $(BMX_OBJ) $(LIB_OBJ)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/test_%: tests/unit/test_%.c $(BMX_OBJ) $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/tests/%: tests/helpers/%.c $(BMX_OBJ) $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

deps:
	@tests/install-deps.sh build

test-deps:
	@tests/install-deps.sh test

run: deps
	@$(MAKE) --no-print-directory all
	@tests/run-example.sh

# Both variants run the same suites; run-tests.sh prints the one summary line.
check: test-deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory SAN=1 all
	@tests/run-tests.sh

clean:
	rm -rf build build-san bin bin-san run

-include $(shell find build build-san -name '*.d' 2>/dev/null)
