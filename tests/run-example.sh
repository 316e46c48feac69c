#!/bin/sh
# `make run`: start backupmx in the foreground with the example config.
set -eu
cd "$(dirname "$0")/.."
conf=conf/backupmx.conf.example
mkdir -p run
bin/backupmx -n -f "$conf"
port=$(sed -n 's/^listen *= *{ *"127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$conf")
cat <<EOT
backupmx is starting in the foreground with $conf (Ctrl-C stops it).

Send it a test message (from another terminal):
  swaks --server 127.0.0.1:$port --from sender@example.net --to user@example.test
or
  python3 -c 'import smtplib; smtplib.SMTP("127.0.0.1", $port).sendmail("sender@example.net", ["user@example.test"], "Subject: hi\r\n\r\nhello\r\n")'

Look at the queue (after Ctrl-C; the daemon owns it while it runs):
  build/tests/qtool run/spool list

EOT
exec bin/backupmx -d -f "$conf"
