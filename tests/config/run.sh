#!/bin/sh
# Config checker suite: runs `BINARY -n -f FILE` on every case and prints TAP.
#
#   tests/config/run.sh bin/backupmx
#
# good/*.conf must load: exit 0 and no output at all.
# bad/*.conf must be refused: exit 1, and for every line
#     # expect: LINE: TEXT
# in the file, stderr must have a line starting with "FILE:LINE: " that
# contains TEXT (FILE being the path exactly as given to -f).
#
# Files may name test fixtures as @TMP@/...: the runner creates a temporary
# directory holding a certificate and its key (cert.pem, key.pem), a second
# key that does not match (other-key.pem), a passphrase-protected key
# (encrypted-key.pem) and a recipient list (rcpt.txt),
# substitutes its path and runs the copy.
set -u

if [ $# -ne 1 ] || [ ! -x "$1" ]; then
    echo "usage: $0 path/to/backupmx" >&2
    exit 2
fi
BIN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bmx-config-test.XXXXXX") || exit 2
trap 'rm -rf "$TMP"' EXIT INT TERM
mkdir -p "$TMP/good" "$TMP/bad"

make_fixtures() {
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=mx2.example.test \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1 &&
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$TMP/other-key.pem" >/dev/null 2>&1 &&
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -aes256 -pass pass:secret -out "$TMP/encrypted-key.pem" >/dev/null 2>&1 &&
    printf 'postmaster@example.test\nalice@example.test\n' >"$TMP/rcpt.txt"
}
if ! make_fixtures; then
    echo "Bail out! cannot create TLS fixtures with openssl"
    exit 2
fi

n=0
failed=0

ok() {
    n=$((n + 1))
    echo "ok $n - $1"
}

not_ok() {
    n=$((n + 1))
    failed=$((failed + 1))
    echo "not ok $n - $1"
    shift
    for line in "$@"; do
        printf '%s\n' "$line" | sed 's/^/# /'
    done
}

# The path to hand to -f: the file itself, or a copy with @TMP@ replaced.
prepare() {
    if grep -q '@TMP@' "$1"; then
        dest="$TMP/$(basename "$(dirname "$1")")/$(basename "$1")"
        sed "s|@TMP@|$TMP|g" "$1" >"$dest"
        echo "$dest"
    else
        echo "$1"
    fi
}

run() {
    out=$("$BIN" -n -f "$1" 2>&1)
    rc=$?
}

check_good() {
    desc=$1 file=$2
    run "$file"
    if [ "$rc" -eq 0 ] && [ -z "$out" ]; then
        ok "$desc"
    else
        not_ok "$desc" "exit status $rc, expected 0 and no output" "$out"
    fi
}

# Each expectation "LINE: TEXT" must match a line of $out.
check_expectations() {
    file=$1 expects=$2 missing=""
    while IFS= read -r exp; do
        [ -n "$exp" ] || continue
        line=${exp%%: *}
        text=${exp#*: }
        prefix="$file:$line: "
        if ! printf '%s\n' "$out" | awk -v p="$prefix" -v t="$text" '
                index($0, p) == 1 && index(substr($0, length(p) + 1), t) > 0 { found = 1 }
                END { exit !found }'; then
            missing="$missing
expected: $prefix...$text..."
        fi
    done <<EOF
$expects
EOF
    printf '%s' "$missing"
}

check_bad() {
    desc=$1 file=$2 expects=$3
    if [ -z "$expects" ]; then
        not_ok "$desc" "no '# expect: LINE: TEXT' line in the test file"
        return
    fi
    run "$file"
    missing=$(check_expectations "$file" "$expects")
    if [ "$rc" -eq 1 ] && [ -z "$missing" ]; then
        ok "$desc"
    else
        not_ok "$desc" "exit status $rc (expected 1)$missing" "got:" "$out"
    fi
}

expectations() {
    sed -n 's/^#[[:space:]]*expect:[[:space:]]*//p' "$1"
}

check_good "example: conf/backupmx.conf.example" "$ROOT/conf/backupmx.conf.example"

for f in "$HERE"/good/*.conf; do
    [ -e "$f" ] || continue
    check_good "good/$(basename "$f")" "$(prepare "$f")"
done

for f in "$HERE"/bad/*.conf; do
    [ -e "$f" ] || continue
    file=$(prepare "$f")
    check_bad "bad/$(basename "$f")" "$file" "$(expectations "$file")"
done

# A file that does not exist at all cannot carry its own expectation.
check_bad "missing config file" "$TMP/no-such-file.conf" "0: cannot open"

echo "1..$n"
if [ "$failed" -ne 0 ]; then
    echo "# $failed of $n config tests failed"
    exit 1
fi
echo "# all $n config tests passed"
exit 0
