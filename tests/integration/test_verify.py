"""Recipient verification by callout (verify = true): the primary's verdict
while it answers, the BDB cache while it is down, and `unverified`."""

import socket
import socketserver
import threading

from harness import Daemon, DaemonTestCase, free_ports


class FakePrimary(socketserver.ThreadingTCPServer):
    """A scripted primary: RCPT for local parts starting with "good" gets
    250, anything else 550 5.1.1. Counts RCPT commands."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port):
        self.rcpts = []
        super().__init__(("127.0.0.1", port), PrimaryHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class PrimaryHandler(socketserver.StreamRequestHandler):
    def handle(self):
        w = self.wfile.write
        w(b"220 primary.example.test ESMTP\r\n")
        for line in self.rfile:
            cmd = line.strip().upper()
            if cmd.startswith(b"EHLO"):
                w(b"250-primary.example.test\r\n250 PIPELINING\r\n")
            elif cmd.startswith(b"MAIL"):
                w(b"250 2.1.0 Ok\r\n")
            elif cmd.startswith(b"RCPT"):
                addr = line.strip()[len(b"RCPT TO:<"):].split(b">")[0]
                self.server.rcpts.append(addr.decode())
                if addr.lower().startswith(b"good"):
                    w(b"250 2.1.5 Ok\r\n")
                else:
                    w(b"550 5.1.1 <%s>: User unknown\r\n" % addr)
            elif cmd.startswith(b"QUIT"):
                w(b"221 2.0.0 Bye\r\n")
                return
            else:
                w(b"502 5.5.2 what\r\n")


class Verify(DaemonTestCase):
    @classmethod
    def setUpClass(cls):
        cls.pport, cls.dead = free_ports(2)
        extra = ('domain "verified.test" { mode = "relay" verify = true '
                 'primary = { "127.0.0.1:%d" } }\n'
                 'domain "lenient.test" { mode = "relay" verify = true '
                 'unverified = "accept" primary = { "127.0.0.1:%d" } }\n'
                 % (cls.pport, cls.dead))
        cls.DAEMON_ARGS = dict(extra=extra, limits=dict(errors=1000))
        cls.primary = FakePrimary(cls.pport)
        try:
            super().setUpClass()
        except Exception:
            cls.primary.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.primary is not None:
            cls.primary.stop()
        super().tearDownClass()

    def rcpt(self, c, addr, code, enh):
        c.check("RSET", 250)
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        return c.check("RCPT TO:<%s>" % addr, code, enh)

    def test_1_primary_up_decides(self):
        c = self.session()
        self.rcpt(c, "good1@verified.test", 250, "2.1.5")
        self.rcpt(c, "bad1@verified.test", 550, "5.1.1")
        self.assertIn("good1@verified.test", self.primary.rcpts)
        self.assertIn("bad1@verified.test", self.primary.rcpts)
        # A second ask is answered from the cache, not by a new callout.
        n = len(self.primary.rcpts)
        self.rcpt(c, "GOOD1@verified.test", 250, "2.1.5")
        self.rcpt(c, "bad1@verified.test", 550, "5.1.1")
        self.assertEqual(len(self.primary.rcpts), n)

    def test_2_primary_down_cache_vouches(self):
        self.primary.stop()
        type(self).primary = None
        c = self.session()
        self.rcpt(c, "good1@verified.test", 250, "2.1.5")
        self.rcpt(c, "bad1@verified.test", 550, "5.1.1")
        r = self.rcpt(c, "good2@verified.test", 450, "4.1.1")
        self.assertIn("unverified", r.text.lower())

    def test_3_cache_survives_restart(self):
        with self.daemon.stopped():
            pass
        c = self.session()
        self.rcpt(c, "good1@verified.test", 250, "2.1.5")

    def test_unverified_accept(self):
        c = self.session()
        self.rcpt(c, "anyone@lenient.test", 250, "2.1.5")

    def test_mail_to_verified_recipient_is_queued(self):
        c = self.session()
        self.assertTrue(c.send_mail(rcpts=("good1@verified.test",)))
