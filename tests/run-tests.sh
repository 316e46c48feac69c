#!/usr/bin/env bash
# Runs every test suite of backupmx, for the normal and the sanitizer build:
#   a) cmocka unit tests      BUILD/tests/test_*        (TAP via CMOCKA_MESSAGE_OUTPUT)
#   b) config checks          tests/config/run.sh BIN/backupmx
#   c) integration suites     tests/integration/run.py --bin BIN --build BUILD
# Each suite's output is shown prefixed with the variant ("[bin] ", "[san] ").
# The last line is the one summary "N passed, N failed"; the exit status is 1
# if anything failed or a suite could not run.
#
# Environment:
#   BMX_VARIANTS="bin bin-san"  variants to run (binary dirs; build dir = bin->build)
#   BMX_TEST_FILTER=substring   run only the integration tests whose id matches
#   BMX_KEEP=1                  keep the integration daemons' temp dirs
set -u
cd "$(dirname "$0")/.." || exit 1

variants=${BMX_VARIANTS:-"bin bin-san"}
passed=0
failed=0
skipped=0
problems=()
failures=()

sanitizer_re='ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:'
out=$(mktemp /tmp/bmx-run-tests.XXXXXX)
trap 'rm -f "$out"' EXIT

# run_suite PREFIX NAME CMD...: shows the output, counts TAP lines.
run_suite() {
    local prefix=$1 name=$2
    shift 2
    echo "${prefix}# === ${name}"
    "$@" </dev/null 2>&1 | tee "$out" | sed -u "s/^/${prefix//\//\\/}/"
    local rc=${PIPESTATUS[0]}
    local ok notok skip
    ok=$(grep -Ec '^ok( |$)' "$out")
    skip=$(grep -Eic '^ok( [0-9]+)?( -)?.*# *skip' "$out")
    notok=$(grep -Ec '^not ok( |$)' "$out")
    ok=$((ok - skip))
    passed=$((passed + ok))
    failed=$((failed + notok))
    skipped=$((skipped + skip))
    if [ "$notok" -eq 0 ]; then
        if [ "$rc" -ne 0 ]; then
            failed=$((failed + 1))
            problems+=("${prefix}${name}: exit status ${rc} with no failing test reported")
            echo "${prefix}not ok - ${name}: exit status ${rc} (crash or suite could not run)"
        elif grep -Eq "$sanitizer_re" "$out"; then
            failed=$((failed + 1))
            problems+=("${prefix}${name}: sanitizer report")
            echo "${prefix}not ok - ${name}: sanitizer report in output"
        fi
    else
        problems+=("${prefix}${name}: ${notok} failed")
        # Named again at the end: CI shows only the tail of the output.
        while IFS= read -r line; do
            failures+=("${prefix}${line}")
        done < <(grep -E '^not ok( |$)' "$out" | head -20)
    fi
}

for bin in $variants; do
    build=${bin/bin/build}
    case $bin in
        bin-san) prefix="[san] " ;;
        *) prefix="[${bin}] " ;;
    esac
    if [ "$bin" = bin-san ]; then
        export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
        export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
    else
        unset ASAN_OPTIONS UBSAN_OPTIONS
    fi

    if [ ! -x "$bin/backupmx" ]; then
        echo "${prefix}not ok - $bin/backupmx is missing (build it first)"
        failed=$((failed + 1))
        problems+=("${prefix}$bin/backupmx missing")
        continue
    fi

    # a) unit tests
    shopt -s nullglob
    units=("$build"/tests/test_*)
    shopt -u nullglob
    if [ ${#units[@]} -eq 0 ]; then
        echo "${prefix}# no unit test binaries in $build/tests"
    fi
    for t in "${units[@]}"; do
        [ -x "$t" ] && [ -f "$t" ] || continue
        CMOCKA_MESSAGE_OUTPUT=TAP run_suite "$prefix" "unit $(basename "$t")" \
            timeout -k 10 300 "$t"
    done

    # b) configuration checks
    if [ -x tests/config/run.sh ]; then
        run_suite "$prefix" "config" timeout -k 10 600 tests/config/run.sh "$bin/backupmx"
    elif [ -f tests/config/run.sh ]; then
        run_suite "$prefix" "config" timeout -k 10 600 sh tests/config/run.sh "$bin/backupmx"
    else
        echo "${prefix}# tests/config/run.sh not present, skipped"
    fi

    # c) integration suites
    run_suite "$prefix" "integration" timeout -k 30 2400 \
        python3 tests/integration/run.py --bin "$bin" --build "$build"
done

# d) fuzz targets over their committed corpora (regression; `make fuzz`
#    fuzzes for real). One build variant: libFuzzer targets are ASan builds.
if [ -z "${BMX_VARIANTS:-}" ] || [ "${BMX_VARIANTS}" != "bin" ]; then
    run_suite "[fuzz] " "fuzz build" sh -c 'tests/fuzz/run.sh build >/dev/null && echo "ok 1 - fuzz targets build"'
    run_suite "[fuzz] " "fuzz regress" timeout -k 10 600 tests/fuzz/run.sh regress
fi

for f in "${failures[@]}"; do
    echo "# $f"
done
for p in "${problems[@]}"; do
    echo "# FAILED: $p"
done
[ "$skipped" -gt 0 ] && echo "# $skipped skipped (counted neither passed nor failed)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
