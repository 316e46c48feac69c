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

Look at the queue (relay mail for example.test waits for 127.0.0.1:2526):
  bin/bmxq -f $conf list

Mail for catchall.test goes to the catch-all mailbox "catchall-test"
(password "secret"), served over POP3 on 127.0.0.1:2110 and IMAP on 127.0.0.1:2143:
  swaks --server 127.0.0.1:$port --from sender@example.net --to anyone@catchall.test
  python3 -c 'import poplib; p = poplib.POP3("127.0.0.1", 2110); p.user("catchall-test"); p.pass_("secret"); print(p.stat()); print(b"\n".join(p.retr(1)[1]).decode())'

EOT
exec bin/backupmx -d -f "$conf"
