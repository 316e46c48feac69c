"""The SMTP side of a catch-all domain: one Maildir copy per recipient with
Return-Path and X-Original-To on top, forged copies of those renamed, no
Delivered-To, quota refused at RCPT time, and no partial file in new/
after a kill -9 in the middle of deliveries."""

import os
import random
import re
import signal
import threading
import time

import harness
from catchall_util import CatchallDaemon, CatchallTestCase
from harness import make_message

SIZE_RE = re.compile(r",S=(\d+),W=(\d+)")


def headers_of(raw):
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


class Store(CatchallTestCase):
    DAEMON_ARGS = dict(pop3_tls=None, imap_tls=None)

    def setUp(self):
        for sub, name in self.daemon.maildir_files():
            os.unlink(os.path.join(self.daemon.maildir, sub, name))

    def test_three_recipients_three_copies(self):
        rcpts = ["alice@catch.test", "bob@catch.test", "Carol@Catch.Test"]
        msg = make_message(subject="three", body=b"one body\r\n")
        self.daemon.deliver(rcpts, sender="sender@example.net", body=msg)
        files = self.daemon.maildir_files()
        self.assertEqual(len(files), 3, files)
        seen = set()
        for sub, name in files:
            self.assertEqual(sub, "new")
            raw = self.daemon.read_message(sub, name)
            h = headers_of(raw)
            self.assertEqual(h[0], b"Return-Path: <sender@example.net>")
            self.assertTrue(h[1].startswith(b"X-Original-To: "), h[:3])
            seen.add(h[1][len(b"X-Original-To: "):].decode())
            self.assertTrue(h[2].startswith(b"Received: from "), h[:3])
            self.assertFalse(any(x.lower().startswith(b"delivered-to:") for x in h), h)
            self.assertTrue(raw.endswith(b"one body\r\n"))
            self.assertNotIn(b"\n", raw.replace(b"\r\n", b""))   # CRLF only
            m = SIZE_RE.search(name)
            self.assertIsNotNone(m, name)
            self.assertEqual(int(m.group(1)), len(raw))
            self.assertEqual(int(m.group(2)), len(raw))
        # the local part as given, the domain in lower case (as matched)
        self.assertEqual(seen, {"alice@catch.test", "bob@catch.test", "Carol@catch.test"})
        self.assertEqual(self.daemon.maildir_files(("tmp",)), [])
        log = self.daemon.log()
        self.assertEqual(len(re.findall(r"relay=local, mailbox=catch, .*status=sent", log)) >= 3, True)

    def test_forged_envelope_headers_renamed(self):
        msg = (b"X-Original-To: root@catch.test\r\n"
               b"Return-Path: <forged@evil.example>\r\n"
               b"Return-Path : <spaced@evil.example>\r\n"
               b"Subject: forged\r\n\r\n"
               b"X-Original-To: in the body stays\r\n")
        self.daemon.deliver(["victim@catch.test"], sender="real@example.net", body=msg)
        (sub, name), = self.daemon.maildir_files()
        raw = self.daemon.read_message(sub, name)
        h = headers_of(raw)
        self.assertEqual([x for x in h if x.lower().startswith(b"x-original-to:")],
                         [b"X-Original-To: victim@catch.test"])
        self.assertEqual([x for x in h if x.lower().startswith(b"return-path")],
                         [b"Return-Path: <real@example.net>"])
        self.assertIn(b"X-Untrusted-Original-To: root@catch.test", h)
        self.assertIn(b"X-Untrusted-Return-Path: <forged@evil.example>", h)
        self.assertIn(b"X-Untrusted-Return-Path : <spaced@evil.example>", h)
        self.assertIn(b"\r\n\r\nX-Original-To: in the body stays\r\n", raw)

    def test_null_sender(self):
        self.daemon.deliver(["x@catch.test"], sender="")
        (sub, name), = self.daemon.maildir_files()
        self.assertTrue(self.daemon.read_message(sub, name).startswith(b"Return-Path: <>\r\n"))

    def test_mixed_relay_and_catchall(self):
        with self.daemon.connect() as c:
            c.ehlo()
            qid = c.send_mail(sender="s@example.net",
                              rcpts=["relay@example.test", "c@catch.test"])
            c.quit()
        self.assertEqual(len(self.daemon.maildir_files()), 1)
        self.assertIn("%s: to=<c@catch.test>, relay=local" % qid, self.daemon.log())
        self.assertEqual(self.queue_count(), (1, 1))


class Quota(CatchallTestCase):
    DAEMON_ARGS = dict(pop3_tls=None, imap_tls=None, quota="20k")

    def test_over_quota_refused_at_rcpt(self):
        body = b"x" * 70 + b"\r\n"
        msg = make_message(subject="fill", body=body * 100)     # ~7.3 KB
        self.daemon.deliver(["a@catch.test"], body=msg)
        self.daemon.deliver(["a@catch.test"], body=msg)
        with self.connect() as c:
            c.ehlo()
            c.check("MAIL FROM:<s@example.net> SIZE=8000", 250)
            c.check("RCPT TO:<a@catch.test>", 452, "4.2.2")
            c.check("RSET", 250)
        self.daemon.deliver(["a@catch.test"], body=msg)   # no SIZE: fits (14.6K used)
        with self.connect() as c:
            c.ehlo()
            c.check("MAIL FROM:<s@example.net>", 250)
            c.check("RCPT TO:<a@catch.test>", 452, "4.2.2")
        self.assertEqual(len(self.daemon.maildir_files()), 3)
        self.assertIn("452 4.2.2 <a@catch.test>: Mailbox full", self.daemon.log())


class KillDuringDelivery(harness.unittest.TestCase):
    """kill -9 while clients deliver: every file in new/ is whole (its S=
    matches, it ends with the body's last line) and tmp/ leftovers are
    cleaned at the next start."""

    def test_kill9_leaves_no_partial_file(self):
        d = CatchallDaemon(pop3_tls=None, imap_tls=None,
                           limits=dict(message_size="10M"))
        self.addCleanup(d.cleanup)
        body = (b"y" * 998 + b"\r\n") * 2000 + b"END-OF-MESSAGE\r\n"     # 2 MB
        msg = make_message(subject="big", body=body)
        acked, tmp_left = [], 0
        for round_ in range(3):
            d.start()
            stop = threading.Event()

            def sender():
                while not stop.is_set():
                    try:
                        acked.append(d.deliver(["k%d@catch.test" % round_], body=msg))
                    except Exception:
                        return
            threads = [threading.Thread(target=sender) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(0.5 + random.random())
            os.kill(d.pid, signal.SIGKILL)
            d.proc.wait(10)
            d.proc = None
            stop.set()
            for t in threads:
                t.join(30)
            for sub, name in d.maildir_files():
                raw = d.read_message(sub, name)
                m = SIZE_RE.search(name)
                self.assertEqual(int(m.group(1)), len(raw), name)
                self.assertTrue(raw.endswith(b"END-OF-MESSAGE\r\n"), name)
            tmp_left += len(d.maildir_files(("tmp",)))
        self.assertGreater(len(acked), 0)
        self.assertGreaterEqual(len(d.maildir_files()), len(acked))
        print("# kill -9 x3 during 2 MB deliveries: %d acknowledged, %d whole files "
              "in the Maildir, %d partial files left in tmp/ (none in new/)"
              % (len(acked), len(d.maildir_files()), tmp_left))
        d.start()          # cleans tmp/ of files older than 36 h only
        d.stop()
