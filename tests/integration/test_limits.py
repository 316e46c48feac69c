"""Limits: recipients per message, connections per IP, idle and DATA
timeouts, error count. A session cut off half-way queues nothing."""

import time

from harness import DaemonTestCase, ConnectionClosed, dot_stuff, make_message


class RecipientLimit(DaemonTestCase):
    DAEMON_ARGS = dict(limits=dict(recipients=5))

    def test_recipient_limit(self):
        before = self.queue_count()
        c = self.session()
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        for i in range(5):
            c.check("RCPT TO:<user%d@example.test>" % i, 250, "2.1.5")
        for i in range(5, 8):
            c.check("RCPT TO:<user%d@example.test>" % i, 452, "4.5.3")
        c.check("DATA", 354)
        c.send(dot_stuff(make_message("many rcpts")))
        c.expect(c.reply(), 250, "2.0.0", "queued as")
        # the limit is per message: the next transaction gets 5 again
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        for i in range(5):
            c.check("RCPT TO:<next%d@example.test>" % i, 250, "2.1.5")
        c.check("RCPT TO:<next5@example.test>", 452, "4.5.3")
        c.check("RSET", 250)
        c.quit()
        after = self.queue_count()
        self.assertEqual(after, (before[0] + 1, before[1] + 5))


class SessionLimits(DaemonTestCase):
    DAEMON_ARGS = dict(limits=dict(connections_per_ip=3, command_timeout="2s",
                                   data_timeout="3s", errors=5))

    def test_connections_per_ip(self):
        held = [self.connect() for _ in range(3)]
        extra = self.daemon.connect(banner=False)
        self.addCleanup(extra.close)
        extra.expect(extra.reply(), 421, "4.7.0")
        extra.assert_closed(5)
        # another client address is not affected by 127.0.0.1's count
        other = self.connect(source="127.0.0.2")
        other.check("NOOP", 250)
        other.quit()
        # once one session ends, 127.0.0.1 may connect again
        held.pop().quit()
        deadline = time.monotonic() + 3
        while True:
            c = self.daemon.connect(banner=False)
            self.addCleanup(c.close)
            r = c.reply()
            if r.code == 220:
                break
            if time.monotonic() > deadline:
                self.fail("no new connection allowed after one closed: %r" % r.text)
            c.close()
            time.sleep(0.1)
        c.quit()
        for h in held:
            h.quit()

    def test_idle_timeout(self):
        c = self.session()
        t0 = time.monotonic()
        r = c.reply(timeout=10)
        elapsed = time.monotonic() - t0
        c.expect(r, 421, "4.4.2", "timeout")
        c.assert_closed(5)
        self.assertGreater(elapsed, 1.5, "timed out before command_timeout")
        self.assertLess(elapsed, 6, "command_timeout = 2s took too long")

    def test_activity_keeps_session(self):
        c = self.session()
        for _ in range(4):
            time.sleep(0.8)
            c.check("NOOP", 250)
        c.quit()

    def test_idle_timeout_in_transaction(self):
        before = self.queue_count()
        c = self.session()
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        c.check("RCPT TO:<user@example.test>", 250, "2.1.5")
        c.expect(c.reply(timeout=10), 421, "4.4.2", "timeout")
        c.assert_closed(5)
        self.assertEqual(self.queue_count(), before)

    def test_data_timeout(self):
        before = self.queue_count()
        c = self.session()
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        c.check("RCPT TO:<user@example.test>", 250, "2.1.5")
        c.check("DATA", 354)
        c.send(b"Subject: half a message\r\n\r\nsome text\r\n")
        t0 = time.monotonic()
        r = c.reply(timeout=12)
        elapsed = time.monotonic() - t0
        c.expect(r, 421, "4.4.2")
        c.assert_closed(5)
        self.assertGreater(elapsed, 2.5, "DATA phase must use data_timeout (3s)")
        self.assertEqual(self.queue_count(), before)

    def test_error_limit(self):
        c = self.session()
        errors = 0
        for _ in range(10):
            try:
                r = c.cmd("FROB")
            except ConnectionClosed:
                c.fail("closed without a 421 reply")
            if r.code == 421:
                break
            c.expect(r, 500, "5.5.2")
            errors += 1
        c.expect(r, 421, "4.7.0", "too many errors")
        self.assertEqual(errors, 5, c.format_transcript())
        c.assert_closed(5)

    def test_error_limit_mid_transaction(self):
        before = self.queue_count()
        c = self.session()
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        c.check("RCPT TO:<user@example.test>", 250, "2.1.5")
        r = None
        for _ in range(10):
            try:
                r = c.cmd("RCPT TO:<user@other.test>")
            except ConnectionClosed:
                c.fail("closed without a 421 reply")
            if r.code == 421:
                break
            self.assertEqual(r.code // 100, 5, r.text)
        c.expect(r, 421, "4.7.0", "too many errors")
        c.assert_closed(5)
        self.assertEqual(self.queue_count(), before)


class TotalConnections(DaemonTestCase):
    DAEMON_ARGS = dict(limits=dict(connections=4, connections_per_ip=10))

    def test_connections_total(self):
        held = [self.connect() for _ in range(2)]
        held += [self.connect(source="127.0.0.2") for _ in range(2)]
        extra = self.daemon.connect(banner=False, source="127.0.0.3")
        self.addCleanup(extra.close)
        r = extra.reply()
        self.assertEqual(r.code, 421, extra.format_transcript())
        extra.assert_closed(5)
        for h in held:
            h.check("NOOP", 250)      # the others are unaffected
            h.quit()
        c = self.connect()
        c.quit()
