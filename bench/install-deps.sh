#!/bin/sh
# Installs the peers bench/run compares against (Debian 12, as root); only
# missing packages are installed. OpenSMTPD conflicts with postfix as a
# package, so its .deb is only downloaded (apt-get download) into
# build/bench/opensmtpd/ and unpacked there by bench/run.
set -eu
cd "$(dirname "$0")/.."

PKGS="postfix dovecot-imapd dovecot-pop3d fetchmail getmail6 gcc libc6-dev openssl
      util-linux procps"

missing=""
for p in $PKGS; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = "installed" ] || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bench/install-deps: missing packages:$missing (run as root)" >&2
        exit 1
    fi
    echo "bench/install-deps: installing$missing"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

dir=build/bench/opensmtpd
if ! ls "$dir"/opensmtpd_*.deb >/dev/null 2>&1; then
    mkdir -p "$dir"
    echo "bench/install-deps: downloading the opensmtpd .deb into $dir"
    if ! (cd "$dir" && apt-get download opensmtpd >/dev/null 2>&1); then
        apt-get update -qq && (cd "$dir" && apt-get download opensmtpd >/dev/null 2>&1) ||
            echo "bench/install-deps: no opensmtpd .deb: bench/run will skip OpenSMTPD" >&2
    fi
fi
exit 0
