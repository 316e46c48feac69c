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

.PHONY: all deps test-deps run check check-long check-suites clean install check-install deb progs
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
# bench-deps: test_bench_quick smoke-tests bench/run with tiny sizes.
check: test-deps bench-deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory SAN=1 all
	@tests/run-tests.sh

# The long versions (not in make check): the crash ledger with 200 kills
# and 50,000 messages, 5,000 messages over a flapping primary, bmxq over
# 100,000 queued messages. Normal build; about 25 minutes.
check-long: test-deps
	@$(MAKE) --no-print-directory all
	@BMX_LONG=1 BMX_TEST_FILTER=test_crash,test_bad_primary.Flapping,test_bmxq_scale \
	    python3 tests/integration/run.py --bin bin --build build -v

clean:
	rm -rf build build-san bin bin-san build-fuzz run

-include $(shell find build build-san -name '*.d' -type f 2>/dev/null)

# ---------------------------------------------------------------------------
# Installation and packaging.
#
#   make install [PREFIX=/usr/local] [DESTDIR=]  programs, man pages, configs
#   make deb                                     ./backupmx_VERSION_ARCH.deb
#   make check-install                           tests/integration/test_install.py
#
# Programs come from PROGS (so bin/fetchd is installed as soon as the fetchd
# rule adds it to PROGS, or once it is built). Configuration always goes to
# $(DESTDIR)$(SYSCONFDIR)/backupmx, /etc by default whatever PREFIX is: the
# daemon's default -f path is /etc/backupmx/backupmx.conf. Existing files
# there are never overwritten, except *.example.
#
# Unit files and the sysv script are installed as examples in
# $(DOCDIR)/examples, with /usr/sbin, /usr/bin and /etc/backupmx rewritten to
# SBINDIR, BINDIR and SYSCONFDIR.
# Set SYSTEMDUNITDIR (e.g. /lib/systemd/system) and INITDDIR (/etc/init.d)
# to install them live as well; debian/rules does.
# ---------------------------------------------------------------------------

PREFIX        ?= /usr/local
DESTDIR       ?=
SBINDIR       ?= $(PREFIX)/sbin
BINDIR        ?= $(PREFIX)/bin
MANDIR        ?= $(PREFIX)/share/man
DOCDIR        ?= $(PREFIX)/share/doc/backupmx
SYSCONFDIR    ?= /etc
SYSTEMDUNITDIR ?=
INITDDIR      ?=
INSTALL       ?= install

# The configuration an installed daemon starts with (/etc/backupmx/backupmx.conf,
# created only when missing): production defaults, no domain yet.
SYSTEM_CONF   := conf/backupmx.conf.system

HAVE_FETCHD    = $(if $(filter %/fetchd,$(PROGS))$(wildcard $(BIN)/fetchd),yes)
INST_SBIN      = $(BIN)/backupmx
INST_BIN       = $(filter-out $(BIN)/backupmx $(BIN)/fetchd,$(PROGS)) \
                 $(if $(HAVE_FETCHD),$(BIN)/fetchd)
FETCHD_FILES   = $(if $(HAVE_FETCHD),,%fetchd.1 %fetchd.5 %fetchd.8 %fetchd.conf.5 \
                 %fetchd.service %fetchd.timer %fetchd@.service %fetchd.cron \
                 %fetchd.conf.example)
INST_MAN1      = $(filter-out $(FETCHD_FILES),$(wildcard man/*.1))
INST_MAN5      = $(filter-out $(FETCHD_FILES),$(wildcard man/*.5))
INST_MAN8      = $(filter-out $(FETCHD_FILES),$(wildcard man/*.8))
INST_UNITS     = $(filter-out $(FETCHD_FILES),$(wildcard init/*.service init/*.timer))
INST_EXAMPLES  = $(filter-out $(FETCHD_FILES),$(INST_UNITS) $(wildcard init/*.init init/*.cron))
INST_CONFS     = $(filter-out $(FETCHD_FILES),$(wildcard conf/*.conf.example))

# The unit files and the init script name /usr/sbin/backupmx, /usr/bin/fetchd
# and /etc/backupmx/.
FIX_PATHS = sed -e 's|/usr/sbin/backupmx|$(SBINDIR)/backupmx|g' \
                -e 's|/usr/bin/fetchd|$(BINDIR)/fetchd|g' \
                -e 's|/etc/backupmx/|$(SYSCONFDIR)/backupmx/|g'

# Second expansion: PROGS may still grow below this point (bin/fetchd).
.SECONDEXPANSION:
progs: $$(PROGS) $$(if $$(HAVE_FETCHD),$$(BIN)/fetchd)

install: progs
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) \
	    $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
	    $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(SYSCONFDIR)/backupmx
	$(INSTALL) -m 0755 $(INST_SBIN) $(DESTDIR)$(SBINDIR)/
	$(if $(strip $(INST_BIN)),$(INSTALL) -m 0755 $(INST_BIN) $(DESTDIR)$(BINDIR)/)
	$(if $(INST_MAN1),$(INSTALL) -m 0644 $(INST_MAN1) $(DESTDIR)$(MANDIR)/man1/)
	$(if $(INST_MAN5),$(INSTALL) -m 0644 $(INST_MAN5) $(DESTDIR)$(MANDIR)/man5/)
	$(if $(INST_MAN8),$(INSTALL) -m 0644 $(INST_MAN8) $(DESTDIR)$(MANDIR)/man8/)
	$(INSTALL) -m 0644 $(INST_CONFS) $(DESTDIR)$(SYSCONFDIR)/backupmx/
	$(INSTALL) -m 0644 README $(DESTDIR)$(DOCDIR)/
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/backupmx/backupmx.conf ]; then \
	    echo "install: keeping $(DESTDIR)$(SYSCONFDIR)/backupmx/backupmx.conf"; \
	else \
	    echo "$(INSTALL) -m 0644 $(SYSTEM_CONF) $(DESTDIR)$(SYSCONFDIR)/backupmx/backupmx.conf"; \
	    $(INSTALL) -m 0644 $(SYSTEM_CONF) $(DESTDIR)$(SYSCONFDIR)/backupmx/backupmx.conf; \
	fi
	@set -e; for f in $(INST_EXAMPLES); do \
	    mode=0644; case $$f in *.init) mode=0755;; esac; \
	    $(FIX_PATHS) $$f > $(DESTDIR)$(DOCDIR)/examples/$${f#init/}; \
	    chmod $$mode $(DESTDIR)$(DOCDIR)/examples/$${f#init/}; \
	done
	@set -e; if [ -n "$(SYSTEMDUNITDIR)" ]; then \
	    $(INSTALL) -d $(DESTDIR)$(SYSTEMDUNITDIR); \
	    for f in $(INST_UNITS); do \
	        $(FIX_PATHS) $$f > $(DESTDIR)$(SYSTEMDUNITDIR)/$${f#init/}; \
	        chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/$${f#init/}; \
	    done; \
	fi
	@set -e; if [ -n "$(INITDDIR)" ]; then \
	    $(INSTALL) -d $(DESTDIR)$(INITDDIR); \
	    $(FIX_PATHS) init/backupmx.init > $(DESTDIR)$(INITDDIR)/backupmx; \
	    chmod 0755 $(DESTDIR)$(INITDDIR)/backupmx; \
	fi
	@if [ -z "$(DESTDIR)" ] && ! getent passwd backupmx >/dev/null; then \
	    echo "install: next: adduser --system --group --no-create-home --home /var/spool/backupmx backupmx"; \
	    echo "install:       install -d -o backupmx -g backupmx -m 0750 /var/spool/backupmx"; \
	fi

# Builds from a copy of the tree (bin/ and build/ here are left alone: the
# package build cleans and rebuilds with Debian's flags) and leaves
# backupmx_VERSION_ARCH.deb in this directory.
DEB_VERSION = $(shell dpkg-parsechangelog -l debian/changelog -S Version 2>/dev/null)

deb:
	@command -v dpkg-buildpackage >/dev/null || { echo "deb: dpkg-dev is not installed" >&2; exit 1; }
	@[ "$(DEB_VERSION)" = "$(VERSION)" ] || \
	    { echo "deb: debian/changelog says $(DEB_VERSION), Makefile says $(VERSION)" >&2; exit 1; }
	@set -e; tmp=$$(mktemp -d /tmp/backupmx-deb.XXXXXX); \
	trap 'rm -rf "$$tmp"' EXIT INT TERM; \
	src=$$tmp/backupmx-$(VERSION); mkdir -p $$src; \
	tar -cf - --exclude-vcs --exclude='./build*' --exclude='./bin*' --exclude=./run \
	    --exclude='./*.deb' --exclude=__pycache__ . \
	    | tar -C $$src -xf -; \
	echo "deb: building in $$src"; \
	(cd $$src && dpkg-buildpackage -us -uc -b) > $$tmp/build.log 2>&1 || \
	    { tail -n 40 $$tmp/build.log >&2; echo "deb: dpkg-buildpackage failed" >&2; exit 1; }; \
	for f in $$tmp/*.deb; do \
	    case $$f in *-dbgsym_*) continue;; esac; \
	    cp $$f .; echo "deb: ./$$(basename $$f)"; \
	done

# libFuzzer targets (clang): each fuzzes for FUZZ_SECONDS; make check runs
# them over their corpora only.
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz:
	tests/fuzz/run.sh build
	tests/fuzz/run.sh fuzz $(FUZZ_SECONDS)

# Side-by-side benchmarks (make check runs only bench-quick's smoke test):
# bench/results/LATEST.md.
.PHONY: bench bench-quick bench-deps
bench-deps:
	@bench/install-deps.sh
bench: all bench-deps
	bench/run
bench-quick: all bench-deps
	bench/run --quick

check-install:
	@BMX_TEST_FILTER=test_install python3 tests/integration/run.py --bin $(BIN) --build $(BUILD)
