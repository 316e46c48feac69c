"""SMTP basics: banner, EHLO/HELO, simple commands, command sequence,
address syntax, parameters, and delivery with swaks and smtplib."""

import os
import re
import smtplib
import subprocess
import unittest

import harness
from harness import DaemonTestCase, HOSTNAME, make_message, split_received


class SmtpCommands(DaemonTestCase):

    def test_banner(self):
        c = self.connect(banner=False)
        r = c.reply()
        self.assertEqual(r.full, ["220 %s ESMTP backupmx" % HOSTNAME], r.text)

    def test_ehlo_capabilities(self):
        c = self.connect()
        r = c.ehlo()
        self.assertEqual(r.full[0], "250-" + HOSTNAME, r.text)
        caps = [l.split()[0].upper() for l in r.lines[1:]]
        self.assertEqual(r.full[-1], "250 SMTPUTF8", r.text)
        for want in ("PIPELINING", "SIZE", "ENHANCEDSTATUSCODES", "8BITMIME",
                     "SMTPUTF8"):
            self.assertIn(want, caps, r.text)
        self.assertIn("SIZE 1048576", r.lines, r.text)
        # no etrn section, no tls section
        self.assertNotIn("ETRN", caps, r.text)
        self.assertNotIn("STARTTLS", caps, r.text)
        for l in r.full[:-1]:
            self.assertTrue(l.startswith("250-"), r.text)

    def test_helo(self):
        c = self.connect()
        r = c.helo()
        self.assertEqual(r.full, ["250 " + HOSTNAME], r.text)

    def test_noop_rset(self):
        c = self.connect()
        c.check("NOOP", 250, "2.0.0", "ok")
        c.check("RSET", 250, "2.0.0", "ok")
        c.ehlo()
        c.check("NOOP", 250, "2.0.0")
        c.check("RSET", 250, "2.0.0")

    def test_vrfy(self):
        c = self.session()
        c.check("VRFY user@example.test", 252, "2.0.0")

    def test_help(self):
        c = self.session()
        c.check("HELP", 214, "2.0.0")

    def test_unknown_command(self):
        c = self.session()
        c.check("FROB nicate", 500, "5.5.2", "command not recognized")
        c.check("NOOP", 250, "2.0.0")   # the session goes on

    def test_quit(self):
        c = self.session()
        c.check("QUIT", 221, "2.0.0", "bye")
        c.assert_closed(5)

    def test_commands_case_insensitive(self):
        c = self.connect()
        c.check("ehlo client.example.test", 250)
        c.check("mail from:<a@b.test>", 250, "2.1.0")
        c.check("rcpt to:<user@example.test>", 250, "2.1.5")
        c.check("rset", 250, "2.0.0")

    def test_mail_before_helo(self):
        c = self.connect()
        c.check("MAIL FROM:<a@b.test>", 503, "5.5.1")

    def test_rcpt_before_mail(self):
        c = self.session()
        c.check("RCPT TO:<user@example.test>", 503, "5.5.1")

    def test_data_before_rcpt(self):
        c = self.session()
        c.check("DATA", 503, "5.5.1")
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        c.check("DATA", 503, "5.5.1")

    def test_nested_mail(self):
        c = self.session()
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        c.check("MAIL FROM:<c@b.test>", 503, "5.5.1")

    def test_rset_clears_transaction(self):
        c = self.session()
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        c.check("RCPT TO:<user@example.test>", 250, "2.1.5")
        c.check("RSET", 250, "2.0.0")
        c.check("RCPT TO:<user@example.test>", 503, "5.5.1")
        c.check("DATA", 503, "5.5.1")

    def test_ehlo_resets_transaction(self):
        c = self.session()
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        c.ehlo()
        c.check("RCPT TO:<user@example.test>", 503, "5.5.1")

    def test_mail_syntax_errors(self):
        for line in ("MAIL", "MAIL FROM", "MAIL FROM <a@b.test>",
                     "MAIL TO:<a@b.test>"):
            with self.subTest(line=line):
                c = self.session()
                c.check(line, 501, "5.5.4")

    def test_rcpt_syntax_errors(self):
        for line in ("RCPT", "RCPT TO", "RCPT TO <user@example.test>",
                     "RCPT FROM:<user@example.test>"):
            with self.subTest(line=line):
                c = self.session()
                c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
                c.check(line, 501, "5.5.4")

    def test_bad_sender_address(self):
        for addr in ("user@", "user@example..test", "us(er@b.test"):
            with self.subTest(addr=addr):
                c = self.session()
                c.check("MAIL FROM:<%s>" % addr, 501, "5.1.7")

    def test_bad_recipient_address(self):
        for addr in ("user@", "user@example..test", "us(er@example.test"):
            with self.subTest(addr=addr):
                c = self.session()
                c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
                c.check("RCPT TO:<%s>" % addr, 501, "5.1.3")

    def test_unknown_parameters(self):
        c = self.session()
        c.check("MAIL FROM:<a@b.test> FOO=BAR", 555, "5.5.4")
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        c.check("RCPT TO:<user@example.test> FOO=BAR", 555, "5.5.4")
        c.check("RCPT TO:<user@example.test>", 250, "2.1.5")

    def test_known_parameters(self):
        c = self.session()
        c.check("MAIL FROM:<a@b.test> BODY=8BITMIME SIZE=1000", 250, "2.1.0")
        c.check("RSET", 250)
        c.check("MAIL FROM:<a@b.test> BODY=7BIT", 250, "2.1.0")
        c.check("RSET", 250)
        c.check("MAIL FROM:<j\u00f6rg@b.test> SMTPUTF8", 250, "2.1.0")
        c.check("RCPT TO:<j\u00f6rg@example.test>", 250, "2.1.5")

    def test_non_ascii_without_smtputf8(self):
        c = self.session()
        c.check("MAIL FROM:<j\u00f6rg@b.test>", 553, "5.6.7")
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        c.check("RCPT TO:<j\u00f6rg@example.test>", 553, "5.6.7")

    def test_null_sender(self):
        c = self.session()
        c.check("MAIL FROM:<>", 250, "2.1.0")
        c.check("RCPT TO:<user@example.test>", 250, "2.1.5")

    def test_size_parameter(self):
        c = self.session()
        c.check("MAIL FROM:<a@b.test> SIZE=2000000", 552, "5.3.4")
        c.check("MAIL FROM:<a@b.test> SIZE=1048577", 552, "5.3.4")
        c.check("MAIL FROM:<a@b.test> SIZE=1000", 250, "2.1.0")

    def test_starttls_not_offered(self):
        c = self.session()
        r = c.cmd("STARTTLS")
        self.assertTrue(500 <= r.code < 600 or r.code == 454, r.text)
        c.check("NOOP", 250)


class SmtpDelivery(DaemonTestCase):

    def test_swaks_delivery(self):
        cp = harness.run_tool(
            ["swaks", "--server", "127.0.0.1:%d" % self.daemon.port,
             "--helo", "client.example.test", "--from", "a@b.test",
             "--to", "user@example.test", "--timeout", "10",
             "--header", "Subject: swaks test"], timeout=30, check=False)
        out = cp.stdout.decode("utf-8", "replace")
        self.assertEqual(cp.returncode, 0, out)
        m = re.search(r"<[-~]\s+250 2\.0\.0 Ok: queued as ([0-9A-Z]{16})", out)
        self.assertTrue(m, out)
        qid = m.group(1)
        body = self.queue_bodies([qid])[qid]
        self.assertIn(b"Subject: swaks test", body)
        self.assertIn(("id " + qid).encode(), split_received(body)[0])

    def test_smtplib_delivery_body(self):
        msg = make_message("smtplib", body=b"line one\r\n\r\nline three\r\n"
                           b"trailing spaces   \r\n\ttab line\r\n")
        s = smtplib.SMTP("127.0.0.1", self.daemon.port, timeout=10)
        try:
            code, _ = s.ehlo("client.example.test")
            self.assertEqual(code, 250)
            self.assertTrue(s.has_extn("pipelining"))
            self.assertEqual(s.mail("a@b.test")[0], 250)
            self.assertEqual(s.rcpt("user@example.test")[0], 250)
            self.assertEqual(s.rcpt("other@example.test")[0], 250)
            code, text = s.data(msg)
            self.assertEqual(code, 250, text)
            m = re.search(rb"queued as ([0-9A-Z]{16})\b", text)
            self.assertTrue(m, text)
            qid = m.group(1).decode()
            self.assertEqual(s.quit()[0], 221)
        finally:
            s.close()
        before = None
        with self.daemon.stopped():
            body = self.daemon.queue_body(qid)
            before = self.daemon.queue_count()
        received, rest = split_received(body)
        self.assertEqual(rest, msg, "stored message differs from the one sent")
        self.assertIn(b"by " + HOSTNAME.encode(), received)
        self.assertIn(b"id " + qid.encode(), received)
        self.assertGreaterEqual(before[0], 1)

    def test_two_messages_one_session(self):
        c = self.session()
        q1 = c.send_mail(msg=make_message("first"))
        q2 = c.send_mail(msg=make_message("second"))
        self.assertNotEqual(q1, q2)
        c.quit()
        bodies = self.queue_bodies([q1, q2])
        self.assertIn(b"Subject: first", bodies[q1])
        self.assertIn(b"Subject: second", bodies[q2])

    def test_null_sender_delivery(self):
        c = self.session()
        qid = c.send_mail(sender="", msg=make_message("bounce"))
        c.quit()
        self.assertIn(b"Subject: bounce", self.queue_bodies([qid])[qid])


@unittest.skipUnless(harness.have_ipv6_loopback(), "no ::1 on this host")
class SmtpIPv6(DaemonTestCase):
    DAEMON_ARGS = dict(ipv6=True)

    def test_ipv6_listener(self):
        c = self.connect(host="::1")
        c.ehlo()
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        c.check("RCPT TO:<user@example.test>", 250, "2.1.5")
        c.quit()
        self.daemon.wait_log(r"connect from \S*\[::1\]")


class CommandLine(unittest.TestCase):

    def run_bmx(self, *args):
        return subprocess.run([harness.backupmx_path()] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=30)

    def test_version(self):
        cp = self.run_bmx("-V")
        out = (cp.stdout + cp.stderr).decode("utf-8", "replace")
        self.assertEqual(cp.returncode, 0, out)
        self.assertRegex(out, r"\d+\.\d+\.\d+")
        self.assertNotRegex(out, harness.SANITIZER_RE)

    def test_check_config(self):
        d = harness.Daemon()
        self.addCleanup(d.cleanup)
        cp = self.run_bmx("-n", "-f", d.conf)
        err = cp.stderr.decode("utf-8", "replace")
        self.assertEqual(cp.returncode, 0, err)
        self.assertNotRegex(err, harness.SANITIZER_RE)
        bad = d.write_file("bad.conf", 'hostname = "x"\nspool = "%s"\n'
                           'listen = { "127.0.0.1:2525" }\n'
                           'no_such_option = 1\n' % d.spool)
        cp = self.run_bmx("-n", "-f", bad)
        err = cp.stderr.decode("utf-8", "replace") + cp.stdout.decode("utf-8", "replace")
        self.assertEqual(cp.returncode, 1, err)
        self.assertIn(bad + ":", err)
        self.assertNotRegex(err, harness.SANITIZER_RE)
        self.assertFalse(os.path.exists(os.path.join(d.spool, "__db.001")))
