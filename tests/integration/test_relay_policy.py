"""Relay policy at RCPT time: configured domains only, no sender-specified
routing, recipient lists (re-read when they change), case and trailing
dot, subdomains, IP literals."""

import time

from harness import DaemonTestCase, DEFAULT_RCPT_LIST


class RelayPolicy(DaemonTestCase):
    # many rejections per session here; the error limit is tested elsewhere
    DAEMON_ARGS = dict(limits=dict(errors=1000, recipients=1000))

    def rcpt(self, c, addr, code, enh=None, *words, utf8=False):
        c.check("RSET", 250)
        c.check("MAIL FROM:<a@b.test>%s" % (" SMTPUTF8" if utf8 else ""),
                250, "2.1.0")
        return c.check("RCPT TO:<%s>" % addr, code, enh, *words)

    def accepted(self, c, addr, **kw):
        return self.rcpt(c, addr, 250, "2.1.5", **kw)

    def denied(self, c, addr):
        return self.rcpt(c, addr, 550, "5.7.1", "relay access denied")

    def test_configured_domain_accepted(self):
        c = self.session()
        for addr in ("user@example.test", "postmaster@example.test",
                     "first.last+tag@example.test", "user@sub.test",
                     '"quoted local"@example.test'):
            with self.subTest(addr=addr):
                self.accepted(c, addr)

    def test_bare_postmaster_accepted(self):
        # RFC 5321 4.5.1: <postmaster> without a domain must be accepted.
        c = self.session()
        self.accepted(c, "postmaster")
        self.accepted(c, "PostMaster")

    def test_other_domain_denied(self):
        c = self.session()
        r = self.denied(c, "user@other.test")
        self.assertIn("<user@other.test>: Relay access denied", r.text)
        for addr in ("user@example.test.other.test", "user@example.tes",
                     "user@xexample.test", "user@test"):
            with self.subTest(addr=addr):
                self.denied(c, addr)

    def test_domain_case_insensitive(self):
        c = self.session()
        for addr in ("user@EXAMPLE.TEST", "User@Example.Test",
                     "USER@eXaMpLe.TeSt"):
            with self.subTest(addr=addr):
                self.accepted(c, addr)

    def test_trailing_dot(self):
        c = self.session()
        self.accepted(c, "user@example.test.")
        self.accepted(c, "user@EXAMPLE.TEST.")
        self.denied(c, "user@other.test.")

    def test_subdomain_not_covered(self):
        c = self.session()
        for addr in ("user@sub.example.test", "user@a.b.example.test",
                     "user@listed.test.example.test"):
            with self.subTest(addr=addr):
                self.denied(c, addr)

    def test_subdomains_true(self):
        c = self.session()
        for addr in ("user@sub.test", "user@a.sub.test", "user@x.y.sub.test",
                     "user@A.SUB.TEST", "user@a.sub.test."):
            with self.subTest(addr=addr):
                self.accepted(c, addr)
        for addr in ("user@xsub.test", "user@sub.test.evil.test",
                     "user@asub.test"):
            with self.subTest(addr=addr):
                self.denied(c, addr)

    def test_ip_literal_denied(self):
        c = self.session()
        for addr in ("user@[127.0.0.1]", "user@[192.0.2.1]",
                     "user@[IPv6:::1]"):
            with self.subTest(addr=addr):
                self.denied(c, addr)

    def test_sender_routing_denied(self):
        for addr in ("user%other.test@example.test",
                     "other.test!user@example.test",
                     "@relay.test:user@example.test",
                     "@relay.test,@other.test:user@example.test",
                     '"user@other.test"@example.test',
                     "user@other.test@example.test",
                     "user%other.test@EXAMPLE.TEST",
                     '"user%other.test"@example.test',
                     "user%other.test@a.sub.test"):
            with self.subTest(addr=addr):
                c = self.session()
                c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
                c.check("RCPT TO:<%s>" % addr, 550, "5.7.1")
                c.quit()

    def test_any_sender_domain(self):
        c = self.session()
        c.check("MAIL FROM:<someone@other.test>", 250, "2.1.0")
        c.check("RCPT TO:<user@example.test>", 250, "2.1.5")

    def test_listed_recipients(self):
        c = self.session()
        self.accepted(c, "alice@listed.test")
        self.accepted(c, "ALICE@LISTED.TEST")     # case-insensitive
        self.accepted(c, "dave@listed.test")      # listed as Dave@Listed.Test
        self.accepted(c, "alice@listed.test.")    # trailing dot
        for addr in ("bob@listed.test",           # commented out in the file
                     "carol@listed.test", "alice2@listed.test",
                     "alic@listed.test", "#bob@listed.test"):
            with self.subTest(addr=addr):
                self.rcpt(c, addr, 550, "5.1.1")
        self.denied(c, "alice@sub.listed.test")

    def test_listed_recipients_reread(self):
        c = self.session()
        self.rcpt(c, "carol@listed.test", 550, "5.1.1")
        try:
            self.daemon.write_file("listed.rcpt",
                                   "# changed\ncarol@listed.test\n"
                                   "dave@listed.test\n", mtime_bump=True)
            deadline = time.monotonic() + 10
            while True:
                c2 = self.session()
                c2.check("MAIL FROM:<a@b.test>", 250)
                r = c2.cmd("RCPT TO:<carol@listed.test>")
                c2.quit()
                if r.code == 250:
                    break
                if time.monotonic() > deadline:
                    self.fail("recipient list not re-read within 10s "
                              "(last reply %r)" % r.text)
                time.sleep(0.2)
            c3 = self.session()
            self.accepted(c3, "carol@listed.test")
            self.accepted(c3, "DAVE@listed.test")
            self.rcpt(c3, "alice@listed.test", 550, "5.1.1")  # removed
            # the session opened before the change sees the new list too
            self.accepted(c, "carol@listed.test")
        finally:
            self.daemon.write_file("listed.rcpt", DEFAULT_RCPT_LIST,
                                   mtime_bump=True)
        # and back again
        deadline = time.monotonic() + 10
        while True:
            c4 = self.session()
            c4.check("MAIL FROM:<a@b.test>", 250)
            r = c4.cmd("RCPT TO:<alice@listed.test>")
            c4.quit()
            if r.code == 250:
                break
            if time.monotonic() > deadline:
                self.fail("restored recipient list not re-read within 10s")
            time.sleep(0.2)
