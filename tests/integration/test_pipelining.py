"""PIPELINING (RFC 2920): command groups sent with one write each; every
reply arrives, in order."""

from harness import DaemonTestCase, dot_stuff, make_message, split_received


class Pipelining(DaemonTestCase):
    DAEMON_ARGS = dict(limits=dict(recipients=100, errors=100))

    def replies(self, c, n):
        return [c.reply() for _ in range(n)]

    def codes(self, replies):
        return [(r.code, r.enh) for r in replies]

    def test_groups(self):
        c = self.connect()
        c.send(b"EHLO client.example.test\r\n")
        ehlo = c.reply()
        self.assertIn("PIPELINING", ehlo.lines)
        c.send(b"MAIL FROM:<a@b.test>\r\n"
               b"RCPT TO:<u1@example.test>\r\n"
               b"RCPT TO:<u2@example.test>\r\n"
               b"RCPT TO:<u3@example.test>\r\n"
               b"DATA\r\n")
        got = self.replies(c, 5)
        self.assertEqual(self.codes(got), [(250, "2.1.0"), (250, "2.1.5"),
                                           (250, "2.1.5"), (250, "2.1.5"),
                                           (354, None)], c.format_transcript())
        msg = make_message("pipelined")
        c.send(dot_stuff(msg) + b"QUIT\r\n")
        done, bye = self.replies(c, 2)
        c.expect(done, 250, "2.0.0", "queued as")
        c.expect(bye, 221, "2.0.0")
        c.assert_closed(5)
        qid = done.qid()
        self.assertEqual(split_received(self.queue_bodies([qid])[qid])[1], msg)

    def test_mixed_accept_reject(self):
        before = self.queue_count()
        c = self.session()
        c.send(b"MAIL FROM:<a@b.test>\r\n"
               b"RCPT TO:<ok1@example.test>\r\n"
               b"RCPT TO:<nobody@other.test>\r\n"
               b"RCPT TO:<carol@listed.test>\r\n"
               b"RCPT TO:<ok2@example.test>\r\n"
               b"RCPT TO:<bad@>\r\n"
               b"DATA\r\n")
        got = self.replies(c, 7)
        self.assertEqual(self.codes(got), [(250, "2.1.0"), (250, "2.1.5"),
                                           (550, "5.7.1"), (550, "5.1.1"),
                                           (250, "2.1.5"), (501, "5.1.3"),
                                           (354, None)], c.format_transcript())
        c.send(dot_stuff(make_message("mixed")) + b"QUIT\r\n")
        c.expect(c.reply(), 250, "2.0.0")
        c.expect(c.reply(), 221)
        after = self.queue_count()
        self.assertEqual(after, (before[0] + 1, before[1] + 2))

    def test_all_rejected_then_data(self):
        before = self.queue_count()
        c = self.session()
        c.send(b"MAIL FROM:<a@b.test>\r\n"
               b"RCPT TO:<x@other.test>\r\n"
               b"RCPT TO:<y@other.test>\r\n"
               b"DATA\r\n")
        got = self.replies(c, 4)
        self.assertEqual([r.code for r in got[:3]], [250, 550, 550])
        self.assertIn(got[3].code, (503, 554), c.format_transcript())
        c.check("NOOP", 250)
        c.quit()
        self.assertEqual(self.queue_count(), before)

    def test_transactions_back_to_back(self):
        """End of one message, the next transaction's commands, in one write."""
        c = self.session()
        head = (b"MAIL FROM:<a@b.test>\r\nRCPT TO:<user@example.test>\r\n"
                b"DATA\r\n")
        c.send(head)
        self.assertEqual([r.code for r in self.replies(c, 3)], [250, 250, 354])
        qids = []
        for i in range(5):
            c.send(dot_stuff(make_message("msg %d" % i)) + head)
            got = self.replies(c, 4)
            self.assertEqual([r.code for r in got], [250, 250, 250, 354],
                             c.format_transcript())
            qids.append(got[0].qid())
        c.send(dot_stuff(make_message("last")) + b"RSET\r\nNOOP\r\nQUIT\r\n")
        got = self.replies(c, 4)
        self.assertEqual([r.code for r in got], [250, 250, 250, 221])
        qids.append(got[0].qid())
        self.assertEqual(len(set(qids)), 6, qids)
        bodies = self.queue_bodies(qids)
        for i in range(5):
            self.assertIn(b"Subject: msg %d\r\n" % i, bodies[qids[i]])

    def test_many_commands_one_write(self):
        c = self.session()
        rcpts = b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(60))
        c.send(b"MAIL FROM:<a@b.test>\r\n" + rcpts + b"RSET\r\n")
        got = self.replies(c, 62)
        self.assertEqual(got[0].code, 250)
        self.assertEqual([r.code for r in got[1:61]], [250] * 60)
        self.assertEqual(got[61].code, 250)
        # a large burst of NOOPs: all answered, none lost
        c.send(b"NOOP\r\n" * 2000)
        got = self.replies(c, 2000)
        self.assertEqual(set(r.code for r in got), {250})
        c.check("QUIT", 221)
