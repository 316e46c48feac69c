#!/bin/sh
# Installs what backupmx needs to build (and, with "test", to run its test
# suite) on Debian 12. Only packages that are missing are installed, so a
# machine that already has them is not touched and no root is needed.
set -eu

BUILD="build-essential pkg-config libevent-dev libssl-dev libdb5.3-dev
       libconfuse-dev libc-ares-dev libetpan-dev"
TEST="libcmocka-dev clang libclang-rt-14-dev swaks libnet-ssleay-perl libio-socket-ssl-perl postfix python3 openssl
      dnsmasq-base procps iproute2 dovecot-imapd dovecot-pop3d
      systemd lintian debhelper dpkg-dev groff-base man-db
      fetchmail getmail6 fdm mpop"

want="$BUILD"
[ "${1:-build}" = "test" ] && want="$BUILD $TEST"

missing=""
for p in $want; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = "installed" ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing (run as root to install them)" >&2
    exit 1
fi
echo "install-deps: installing$missing"
# Postfix is only used as a test peer (smtp-source, smtp-sink, a private
# primary); its own system service is never configured or started.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
