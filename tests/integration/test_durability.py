"""Durability: every message that got its 250 survives kill -9; a clean
SIGTERM with sessions open exits 0."""

import shutil
import unittest

import harness
from harness import DaemonTestCase, dot_stuff, make_message, split_received


class Durability(DaemonTestCase):
    TIMEOUT = 600       # smtp-source x 2000 under the sanitizers
    DAEMON_ARGS = dict(limits=dict(connections=200, connections_per_ip=100,
                                   command_timeout="30s", data_timeout="30s"))

    def crash_and_count(self):
        """kill -9, start (recovery), clean stop, count, start again."""
        self.daemon.kill9()
        self.daemon.start()
        self.daemon.stop()
        try:
            return self.daemon.queue_count()
        finally:
            self.daemon.start()

    @unittest.skipUnless(shutil.which("smtp-source"), "smtp-source not installed")
    def test_smtp_source_2000_kill9(self):
        before = self.queue_count()
        cp = harness.run_tool(
            ["smtp-source", "-s", "20", "-m", "2000", "-f", "a@b.test",
             "-t", "user@example.test", "127.0.0.1:%d" % self.daemon.port],
            timeout=480, check=False)
        out = (cp.stdout + cp.stderr).decode("utf-8", "replace")
        self.assertEqual(cp.returncode, 0, "smtp-source failed:\n" + out[-3000:])
        self.assertNotIn("fatal", out)
        self.assertNotIn("warning", out)
        self.assertEqual(self.crash_and_count(),
                         (before[0] + 2000, before[1] + 2000))

    def test_kill9_right_after_250(self):
        before = self.queue_count()
        qids = []
        c = self.session()
        for i in range(5):
            qids.append(c.send_mail(msg=make_message("seq %d" % i)))
        # three more, pipelined in one write; kill as soon as the last 250 is read
        head = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n"
        c.send(head)
        for i in range(3):
            self.assertEqual([c.reply().code for _ in range(3)], [250, 250, 354])
            c.send(dot_stuff(make_message("pipe %d" % i)) + (head if i < 2 else b""))
            r = c.expect(c.reply(), 250, "2.0.0", "queued as")
            qids.append(r.qid())
        self.daemon.kill9()
        c.close()
        self.daemon.start()
        self.daemon.stop()
        try:
            self.assertEqual(self.daemon.queue_count(),
                             (before[0] + 8, before[1] + 8))
            for i, qid in enumerate(qids):
                body = self.daemon.queue_body(qid)
                subject = b"seq %d" % i if i < 5 else b"pipe %d" % (i - 5)
                self.assertIn(b"Subject: " + subject + b"\r\n",
                              split_received(body)[1], qid)
        finally:
            self.daemon.start()

    def test_kill9_parallel_sessions(self):
        before = self.queue_count()
        clients = [self.session() for _ in range(8)]
        qids = []
        for round_ in range(3):
            for c in clients:
                c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n")
            for c in clients:
                self.assertEqual([c.reply().code for _ in range(3)], [250, 250, 354])
            for c in clients:
                c.send(dot_stuff(make_message("parallel")))
            for c in clients:
                qids.append(c.expect(c.reply(), 250, "2.0.0").qid())
        self.assertEqual(len(set(qids)), 24)
        self.assertEqual(self.crash_and_count(), (before[0] + 24, before[1] + 24))

    def test_sigterm_with_open_sessions(self):
        before = self.queue_count()
        idle = self.session()
        mid_tx = self.session()
        mid_tx.check("MAIL FROM:<a@b.test>", 250)
        mid_tx.check("RCPT TO:<user@example.test>", 250)
        mid_data = self.session()
        mid_data.check("MAIL FROM:<a@b.test>", 250)
        mid_data.check("RCPT TO:<user@example.test>", 250)
        mid_data.check("DATA", 354)
        mid_data.send(b"Subject: unfinished\r\n\r\nhalf")
        self.daemon.stop()          # must exit 0 within the stop timeout
        try:
            after = self.daemon.queue_count()
        finally:
            self.daemon.start()
        for c in (idle, mid_tx, mid_data):
            c.read_until_close(5)   # a 421 first is fine
        self.assertEqual(after, before, "an unfinished message was queued")
