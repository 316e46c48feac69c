#!/bin/sh
# libFuzzer targets for backupmx's parsers (issue 9, item 5).
#
#   tests/fuzz/run.sh build            compile every tests/fuzz/fuzz_*.c into build-fuzz/
#   tests/fuzz/run.sh regress          run each target once over its seed corpus (TAP)
#   tests/fuzz/run.sh fuzz SECONDS     fuzz each target for SECONDS, report executions (TAP)
#   tests/fuzz/run.sh fuzz SECONDS T.. only the named targets (fuzz_addr ...)
#   tests/fuzz/run.sh crashes          run the reproducers in tests/fuzz/crashes/ (TAP:
#                                      "ok" = no longer crashes, move it to corpus/)
#
# Targets link the project's sources directly (no libbmx archive) with
# clang -g -O1 -fsanitize=fuzzer,address,undefined. Seed corpora live in
# tests/fuzz/corpus/<target>/ and are only read; what fuzzing adds goes to
# build-fuzz/corpus/<target>/, crashes to build-fuzz/artifacts/<target>/.
#
# tests/fuzz/crashes/<target>/ holds reproducers of bugs found and not yet
# fixed (not part of `regress`, which must pass); once fixed, move each one
# into corpus/<target>/ so that `regress` keeps it fixed.
#
# Environment: CLANG (default clang, else clang-14), FUZZ_OUT (default
# build-fuzz), FUZZ_FLAGS (extra libFuzzer flags for `fuzz`).
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${FUZZ_OUT:-$ROOT/build-fuzz}
case $OUT in /*) ;; *) OUT=$ROOT/$OUT ;; esac

if [ -n "${CLANG:-}" ]; then :
elif command -v clang >/dev/null 2>&1; then CLANG=clang
else CLANG=clang-14
fi

CFLAGS="-std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
        -fno-omit-frame-pointer -Wall -Wextra -Werror -D_GNU_SOURCE -Ilib -Ibackupmx -Icatchall -Ifetchd"

TARGETS="fuzz_smtp_cmd fuzz_addr fuzz_smtp_data fuzz_config fuzz_bounce fuzz_pop3
         fuzz_imap fuzz_multidrop"

# The project sources and libraries each target needs.
srcs() {
    case $1 in
    fuzz_smtp_cmd)  echo backupmx/smtp_parse.c lib/addr.c ;;
    fuzz_addr)      echo lib/addr.c ;;
    fuzz_smtp_data) echo backupmx/smtp_data.c ;;
    fuzz_config)    echo lib/config.c lib/conf_load.c lib/units.c ;;
    fuzz_bounce)    echo backupmx/bounce.c ;;
    fuzz_pop3)      echo catchall/pop3_parse.c catchall/pop3_retr.c ;;
    fuzz_imap)      echo catchall/imap_parse.c catchall/imap_envelope.c ;;
    fuzz_multidrop) echo fetchd/multidrop.c ;;
    esac
}
libs() {
    case $1 in
    fuzz_smtp_cmd|fuzz_addr) echo "" ;;
    fuzz_smtp_data|fuzz_bounce) echo -levent ;;
    fuzz_config)    echo -lconfuse -lssl -lcrypto ;;
    fuzz_pop3)      echo -levent -lcrypto ;;
    fuzz_imap)      echo -levent ;;
    fuzz_multidrop) echo "" ;;
    esac
}
# Per-target libFuzzer options: the input size worth exploring.
opts() {
    case $1 in
    fuzz_smtp_cmd)  echo -max_len=4096 ;;
    fuzz_addr)      echo -max_len=1024 ;;
    fuzz_smtp_data) echo -max_len=8192 ;;
    fuzz_config)    echo -max_len=8192 ;;
    fuzz_bounce)    echo -max_len=8192 ;;
    fuzz_pop3)      echo -max_len=4096 ;;
    fuzz_imap)      echo -max_len=8192 ;;
    fuzz_multidrop) echo -max_len=8192 ;;
    esac
}

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# fuzz_config writes its fixtures under TMPDIR; keep them with the build.
export TMPDIR="$OUT/tmp"

build_one() {
    t=$1
    exe=$OUT/$t
    deps="$HERE/$t.c $HERE/fuzz_util.h"
    for s in $(srcs "$t"); do deps="$deps $ROOT/$s"; done
    stale=no
    [ -x "$exe" ] || stale=yes
    if [ $stale = no ]; then
        for d in $deps "$ROOT"/lib/*.h "$ROOT"/backupmx/*.h "$ROOT"/catchall/*.h "$ROOT"/fetchd/*.h; do
            [ "$d" -nt "$exe" ] && { stale=yes; break; }
        done
    fi
    [ $stale = no ] && return 0
    echo "# build $t"
    # shellcheck disable=SC2086,SC2046
    (cd "$ROOT" && $CLANG $CFLAGS -o "$exe" "tests/fuzz/$t.c" $(srcs "$t") $(libs "$t"))
}

do_build() {
    mkdir -p "$OUT" "$OUT/tmp" || exit 2
    if ! command -v "$CLANG" >/dev/null 2>&1; then
        echo "Bail out! $CLANG not found (apt-get install clang libclang-rt-14-dev)"
        exit 2
    fi
    rc=0
    for t in $TARGETS; do
        build_one "$t" || { echo "# build of $t failed"; rc=1; }
    done
    return $rc
}

do_regress() {
    do_build || exit 2
    n=0 failed=0
    echo "1..$(echo "$TARGETS" | wc -w)"
    for t in $TARGETS; do
        n=$((n + 1))
        corpus=$HERE/corpus/$t
        log=$OUT/$t.regress.log
        # Files, not a directory: libFuzzer runs each input once and exits.
        # shellcheck disable=SC2046
        if [ -d "$corpus" ] && [ -n "$(ls -A "$corpus")" ] &&
           "$OUT/$t" $(opts "$t") -timeout=25 "$corpus"/* >"$log" 2>&1; then
            echo "ok $n - $t corpus ($(ls "$corpus" | wc -l) inputs)"
        else
            failed=$((failed + 1))
            echo "not ok $n - $t corpus"
            tail -n 40 "$log" 2>/dev/null | sed 's/^/# /'
        fi
    done
    echo "# fuzz regression: $((n - failed)) passed, $failed failed"
    [ $failed -eq 0 ]
}

do_fuzz() {
    secs=$1
    shift
    list=${*:-$TARGETS}
    do_build || exit 2
    n=0 failed=0
    echo "1..$(echo "$list" | wc -w)"
    for t in $list; do
        n=$((n + 1))
        work=$OUT/corpus/$t
        art=$OUT/artifacts/$t
        log=$OUT/$t.fuzz.log
        mkdir -p "$work" "$art"
        dict=
        [ -f "$HERE/$t.dict" ] && dict="-dict=$HERE/$t.dict"
        # New inputs go to the first (scratch) directory, never to the seeds.
        # shellcheck disable=SC2046,SC2086
        "$OUT/$t" $(opts "$t") $dict -timeout=25 -rss_limit_mb=2048 \
            -max_total_time="$secs" -print_final_stats=1 \
            -artifact_prefix="$art/" ${FUZZ_FLAGS:-} \
            "$work" "$HERE/corpus/$t" >"$log" 2>&1
        status=$?
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
        if [ $status -eq 0 ]; then
            echo "ok $n - $t ${execs:-?} executions in ${secs}s (${cov:-cov: ?})"
        else
            failed=$((failed + 1))
            echo "not ok $n - $t exit $status after ${execs:-?} executions"
            grep -E 'ERROR: |fuzz check failed|runtime error|Test unit written|SUMMARY' "$log" |
                head -n 20 | sed 's/^/# /'
        fi
    done
    echo "# fuzzing: $((n - failed)) clean, $failed found a problem (logs: $OUT/*.fuzz.log)"
    [ $failed -eq 0 ]
}

do_crashes() {
    do_build || exit 2
    n=0 open=0
    for t in $TARGETS; do
        for f in "$HERE/crashes/$t"/*; do
            [ -f "$f" ] || continue
            n=$((n + 1))
            if "$OUT/$t" -timeout=25 "$f" >"$OUT/$t.crash.log" 2>&1; then
                echo "ok $n - $t $(basename "$f") # fixed: move it to corpus/$t/"
            else
                open=$((open + 1))
                echo "not ok $n - $t $(basename "$f")"
                grep -E -A1 'fuzz check failed|runtime error|ERROR: Address' \
                    "$OUT/$t.crash.log" | head -n 4 | sed 's/^/# /'
            fi
        done
    done
    echo "1..$n"
    echo "# reproducers: $open of $n still fail"
    [ $open -eq 0 ]
}

case ${1:-} in
build)   do_build ;;
regress) do_regress ;;
crashes) do_crashes ;;
fuzz)
    [ $# -ge 2 ] || { echo "usage: $0 fuzz SECONDS [TARGET...]" >&2; exit 2; }
    secs=$2
    shift 2
    do_fuzz "$secs" "$@" ;;
*)
    echo "usage: $0 build | regress | crashes | fuzz SECONDS [TARGET...]" >&2
    exit 2 ;;
esac
