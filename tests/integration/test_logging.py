"""Log lines (stderr with -d): Postfix style, one line per event, greppable
by queue id."""

import re

from harness import DaemonTestCase, make_message


class Logging(DaemonTestCase):

    def prefix(self):
        return r"^\S+ backupmx\[%d\]: " % self.daemon.pid

    def reject_prefix(self):
        """Rejections may carry the queue id (or NOQUEUE) like Postfix."""
        return self.prefix() + r"(?:(?:[0-9A-Z]{16}|NOQUEUE): )?"

    def test_line_format(self):
        c = self.session()
        c.quit()
        self.daemon.wait_log(self.prefix() + r"disconnect from ")
        for line in self.daemon.log().splitlines():
            if line.startswith("=== harness"):
                continue
            self.assertRegex(line, r"^\S+ backupmx\[\d+\]: \S",
                             "log line not in 'TIMESTAMP backupmx[PID]: message' form")

    def test_session_lines(self):
        mark = self.daemon.log_mark()
        p = self.prefix()
        c = self.connect()
        c.check("EHLO helo.example.test", 250)
        c.check("MAIL FROM:<a@b.test>", 250)
        c.check("RCPT TO:<user@other.test>", 550, "5.7.1")
        c.check("RCPT TO:<user@example.test>", 250)
        c.check("DATA", 354)
        msg = make_message("logged")
        c.send(msg + b".\r\n")
        qid = c.expect(c.reply(), 250, "2.0.0").qid()
        c.quit()
        w = self.daemon.wait_log
        w(p + r"connect from unknown\[127\.0\.0\.1\]$", since=mark)
        w(self.reject_prefix() + re.escape("reject: RCPT from unknown[127.0.0.1]: 550 5.7.1 "
                        "<user@other.test>: Relay access denied; "
                        "from=<a@b.test> to=<user@other.test> proto=ESMTP "
                        "helo=<helo.example.test>") + "$", since=mark)
        w(p + re.escape("%s: client=unknown[127.0.0.1]" % qid) + "$", since=mark)
        m = w(p + re.escape(qid) + r": from=<a@b\.test>, size=(\d+), nrcpt=1 "
              r"\(queue active\)$", since=mark)
        self.assertGreaterEqual(int(m.group(1)), len(msg))
        w(p + r"disconnect from unknown\[127\.0\.0\.1\]", since=mark)
        # the queue id line comes before the from= line, connect first
        text = self.daemon.log(mark)
        self.assertLess(text.index("connect from unknown"),
                        text.index("%s: client=" % qid))
        self.assertLess(text.index("%s: client=" % qid),
                        text.index("%s: from=" % qid))

    def test_helo_proto_and_null_sender(self):
        mark = self.daemon.log_mark()
        c = self.connect()
        c.check("HELO old.example.test", 250)
        c.check("MAIL FROM:<>", 250)
        c.check("RCPT TO:<x@[127.0.0.1]>", 550, "5.7.1")
        c.check("RCPT TO:<user@example.test>", 250)
        c.check("DATA", 354)
        c.send(make_message("null") + b".\r\n")
        qid = c.expect(c.reply(), 250).qid()
        c.quit()
        p = self.prefix()
        self.daemon.wait_log(
            self.reject_prefix() + re.escape("reject: RCPT from unknown[127.0.0.1]: 550 5.7.1 "
                          "<x@[127.0.0.1]>: Relay access denied; from=<> "
                          "to=<x@[127.0.0.1]> proto=SMTP helo=<old.example.test>"),
            since=mark)
        self.daemon.wait_log(p + re.escape(qid) + r": from=<>, size=\d+, nrcpt=1 ",
                             since=mark)

    def test_multiple_recipients_nrcpt(self):
        mark = self.daemon.log_mark()
        c = self.session()
        qid = c.send_mail(rcpts=("a1@example.test", "a2@example.test",
                                 "alice@listed.test"))
        c.quit()
        self.daemon.wait_log(self.prefix() + re.escape(qid) +
                             r": from=<a@b\.test>, size=\d+, nrcpt=3 \(queue active\)",
                             since=mark)

    def test_one_line_per_event(self):
        """A CR/LF smuggled into a logged value must not forge a log line."""
        mark = self.daemon.log_mark()
        c = self.connect()
        c.check("EHLO evil.example.test", 250)
        c.check("MAIL FROM:<a@b.test>", 250)
        r = c.cmd("RCPT TO:<x\rbackupmx[1]: forged@other.test>")
        self.assertNotEqual(r.code, 250)
        c.quit()
        self.daemon.wait_log(r"disconnect from unknown\[127\.0\.0\.1\]", since=mark)
        text = self.daemon.log(mark)
        self.assertNotIn("\rbackupmx[1]", text)
        for line in text.splitlines():
            self.assertNotRegex(line, r"^backupmx\[1\]:")
