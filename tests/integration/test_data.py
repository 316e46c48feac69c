"""DATA handling: dot-unstuffing, SMTP smuggling (bare CR/LF end-of-data
variants), line length, Received loop, message size, and command-line
hygiene (bare LF, over-long lines)."""

import socket
import struct
import time

from harness import DaemonTestCase, dot_stuff, make_message, split_received

SMUGGLE_TAIL = (b"MAIL FROM:<smuggled@b.test>\r\n"
                b"RCPT TO:<victim@example.test>\r\n"
                b"DATA\r\n"
                b"From: <smuggled@b.test>\r\nSubject: smuggled\r\n\r\n"
                b"smuggled body\r\n")

# (name, fake end-of-data sequence) from the published SMTP smuggling research
SMUGGLE_VARIANTS = [
    ("LF.LF", b"\n.\n"),
    ("LF.CRLF", b"\n.\r\n"),
    ("CRLF.LF", b"\r\n.\n"),
    ("CR.CR", b"\r.\r"),
    ("CRLF.CR", b"\r\n.\r"),
    ("CR.CRLF", b"\r.\r\n"),
    ("CR.LF", b"\r.\n"),
    ("LF.CR", b"\n.\r"),
]


class DataHandling(DaemonTestCase):
    DAEMON_ARGS = dict(limits=dict(errors=20))

    def open_data(self, c=None, rcpts=("user@example.test",)):
        c = c or self.session()
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        for r in rcpts:
            c.check("RCPT TO:<%s>" % r, 250, "2.1.5")
        c.check("DATA", 354, None, "<CR><LF>.<CR><LF>")
        return c

    def after_reject(self, c):
        """After a rejected DATA: the transaction is gone, nothing pending."""
        c.check("RCPT TO:<user@example.test>", 503, "5.5.1")
        c.check("QUIT", 221)
        c.assert_closed(5)

    def test_dot_unstuffing(self):
        msg = make_message("dots", body=(
            b".leading dot\r\n"
            b"..two dots\r\n"
            b".\r\n"                        # a lone dot inside the body
            b"..\r\n"
            b"...\r\n"
            b". space\r\n"
            b"x.\r\n"
            b"\r\n"
            b"8bit: \xc3\xa4\xc3\xb6\xc3\xbc \xff\r\n"
            b"trailing white \t \r\n"
            b"last line .\r\n"))
        wire = dot_stuff(msg)
        self.assertIn(b"\r\n..leading dot\r\n", wire)
        c = self.open_data()
        c.send(wire)
        qid = c.expect(c.reply(), 250, "2.0.0", "queued as").qid()
        c.quit()
        stored = self.queue_bodies([qid])[qid]
        received, rest = split_received(stored)
        self.assertEqual(rest, msg)

    def test_empty_lines_and_unfinished_header(self):
        msg = b"Subject: no body\r\n"
        c = self.open_data()
        c.send(msg + b".\r\n")
        qid = c.expect(c.reply(), 250, "2.0.0").qid()
        c.quit()
        received, rest = split_received(self.queue_bodies([qid])[qid])
        self.assertEqual(rest, msg)

    def test_end_split_across_packets(self):
        c = self.open_data()
        msg = make_message("split")
        wire = dot_stuff(msg)
        # ... body\r\n  |  .  |  \r\n  in three packets
        c.send(wire[:-3])
        c.quiet(0.2)
        c.send(b".")
        c.quiet(0.2)
        c.send(b"\r\n")
        qid = c.expect(c.reply(), 250, "2.0.0").qid()
        c.quit()
        self.assertEqual(split_received(self.queue_bodies([qid])[qid])[1], msg)

    def test_end_after_overlong_line_split_at_cr(self):
        # Found by fuzz_smtp_data: the daemon drops an LF-less run of over
        # 8 KB; when that run ended in the CR of "\r\n.\r\n", the end of
        # data was missed and the session fell out of step.
        c = self.open_data()
        c.send(b"Subject: long\r\n\r\n" + b"x" * 9000 + b"\r")
        c.quiet(0.3)
        c.send(b"\n.\r\n")
        c.expect(c.reply(), 554, "5.6.0")
        c.check("NOOP", 250)
        c.quit()

    def test_smuggling(self):
        before = self.queue_count()
        for name, fake in SMUGGLE_VARIANTS:
            with self.subTest(variant=name):
                c = self.open_data()
                c.send(b"From: <a@b.test>\r\nSubject: carrier\r\n\r\n"
                       b"carrier body" + fake + SMUGGLE_TAIL)
                # nothing may be answered before the real CRLF.CRLF
                c.quiet(0.3)
                c.send(b".\r\n")
                c.expect(c.reply(), 554, "5.6.0")
                self.after_reject(c)
        self.assertEqual(self.queue_count(), before,
                         "a smuggling attempt left something in the queue")

    def test_smuggling_pipelined_in_one_packet(self):
        """The smuggled MAIL after "\\n.\\r\\n" and the real end in one write."""
        before = self.queue_count()
        c = self.open_data()
        c.send(b"Subject: carrier\r\n\r\ncarrier\n.\r\n" + SMUGGLE_TAIL +
               b".\r\nRCPT TO:<user@example.test>\r\nQUIT\r\n")
        c.expect(c.reply(), 554, "5.6.0")
        c.expect(c.reply(), 503, "5.5.1")
        c.expect(c.reply(), 221, "2.0.0")
        c.assert_closed(5)
        self.assertEqual(self.queue_count(), before)

    def test_bare_lf_and_cr_in_body(self):
        before = self.queue_count()
        bodies = [
            ("bare LF", b"Subject: x\r\n\r\nline one\nline two\r\n"),
            ("bare CR", b"Subject: x\r\n\r\nline one\rline two\r\n"),
            ("bare LF in header", b"Subject: x\nX-Other: y\r\n\r\nbody\r\n"),
            ("CR before CRLF", b"Subject: x\r\n\r\nline\r\r\n"),
            ("LF after CRLF", b"Subject: x\r\n\r\nline\r\n\nmore\r\n"),
        ]
        for name, body in bodies:
            with self.subTest(case=name):
                c = self.open_data()
                c.send(body)
                c.quiet(0.2)
                c.send(b".\r\n")
                c.expect(c.reply(), 554, "5.6.0")
                self.after_reject(c)
        self.assertEqual(self.queue_count(), before)

    def test_line_length(self):
        before = self.queue_count()
        ok_line = b"a" * 998
        msg = make_message("998", body=ok_line + b"\r\n")
        c = self.open_data()
        c.send(dot_stuff(msg))
        qid = c.expect(c.reply(), 250, "2.0.0").qid()
        self.open_data(c)
        c.send(make_message("999", body=b"b" * 999 + b"\r\n") + b".\r\n")
        c.expect(c.reply(), 554, "5.6.0")
        self.open_data(c)
        c.send(make_message("long", body=b"c" * 20000 + b"\r\n") + b".\r\n")
        c.expect(c.reply(), 554, "5.6.0")
        # a 998-octet line starting with a stuffed dot is 999 on the wire
        self.open_data(c)
        stuffed = dot_stuff(make_message("dot998", body=b"." + b"d" * 997 + b"\r\n"))
        c.send(stuffed)
        qid2 = c.expect(c.reply(), 250, "2.0.0").qid()
        self.after_reject(c)
        with self.daemon.stopped():
            self.assertEqual(self.daemon.queue_count()[0], before[0] + 2)
            stored = self.daemon.queue_body(qid)
            stored2 = self.daemon.queue_body(qid2)
        self.assertEqual(split_received(stored)[1], msg)
        self.assertIn(b"\r\n." + b"d" * 997 + b"\r\n", stored2)

    def test_received_loop(self):
        before = self.queue_count()
        hop = b"Received: from a.test by b.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
        c = self.open_data()
        c.send(hop * 101 + b"Subject: loop\r\n\r\nbody\r\n.\r\n")
        c.expect(c.reply(), 554, "5.4.6")
        # folded Received headers count too
        self.open_data(c)
        c.send(b"Received: from a.test\r\n\tby b.test; Thu, 1 Jan 2026\r\n" * 120
               + b"Subject: loop\r\n\r\nbody\r\n.\r\n")
        c.expect(c.reply(), 554, "5.4.6")
        # 99 hops are fine; "Received:" lines in the body are not headers
        self.open_data(c)
        c.send(hop * 99 + b"Subject: ok\r\n\r\nbody\r\n.\r\n")
        c.expect(c.reply(), 250, "2.0.0")
        self.open_data(c)
        c.send(b"Subject: quoting\r\n\r\n" + hop * 150 + b".\r\n")
        c.expect(c.reply(), 250, "2.0.0")
        c.quit()
        self.assertEqual(self.queue_count()[0], before[0] + 2)

    def test_oversized_message(self):
        before = self.queue_count()
        c = self.open_data()
        big = make_message("big", body=(b"x" * 76 + b"\r\n") * 15000)  # ~1.17 MB
        c.send(dot_stuff(big))
        c.expect(c.reply(30), 552, "5.3.4")
        c.check("NOOP", 250, "2.0.0")        # the rest was not read as commands
        c.check("RCPT TO:<user@example.test>", 503, "5.5.1")
        # SIZE= within the limit but the real data over it
        c.check("MAIL FROM:<a@b.test> SIZE=1000", 250, "2.1.0")
        c.check("RCPT TO:<user@example.test>", 250, "2.1.5")
        c.check("DATA", 354)
        c.send(dot_stuff(big))
        c.expect(c.reply(30), 552, "5.3.4")
        c.quit()
        self.assertEqual(self.queue_count(), before)

    def test_large_message_stored_exactly(self):
        """Just under message_size (1M): a body that may go to a spool file."""
        line = bytes(range(0x20, 0x7f)) * 2 + b"\xc3\xa9\r\n"     # 192 + 4 octets
        msg = make_message("large", body=line * 5000)                 # ~0.98 MB
        self.assertLess(len(msg) + 300, 1048576)
        c = self.open_data()
        c.send(dot_stuff(msg))
        qid = c.expect(c.reply(30), 250, "2.0.0").qid()
        c.quit()
        self.assertEqual(split_received(self.queue_bodies([qid])[qid])[1], msg)

    def test_client_vanishes(self):
        """Clients that disappear mid-DATA or right after the final dot."""
        before = self.queue_count()
        c = self.open_data()
        c.send(b"Subject: cut\r\n\r\nhalf a bo")
        c.close()
        c = self.open_data()
        c.send(b"Subject: cut\r\n\r\nbody\r\n")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          struct.pack("ii", 1, 0))      # RST
        c.close()
        # the end of data and a reset at once: it may be queued or not
        c = self.open_data()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          struct.pack("ii", 1, 0))
        c.send(b"Subject: gone\r\n\r\nbody\r\n.\r\n")
        c.close()
        time.sleep(0.3)
        c = self.session()
        c.check("NOOP", 250)
        c.quit()
        after = self.queue_count()
        self.assertIn(after[0], (before[0], before[0] + 1), (before, after))

    def test_bare_lf_in_command(self):
        c = self.session()
        c.send(b"MAIL FROM:<a@b.test>\nNOOP\r\n")
        c.expect(c.reply(), 500, "5.5.2")
        c.send(b"QUIT\r\n")
        rest = c.read_until_close(5)
        self.assertNotIn(b"2.1.0", rest, c.format_transcript())
        self.assertIn(b"221 2.0.0", rest, c.format_transcript())

    def test_bare_lf_terminated_commands(self):
        c = self.session()
        c.send(b"NOOP\n")
        c.send(b"RSET\r\n")
        r = c.reply()
        self.assertEqual((r.code, r.enh), (500, "5.5.2"), c.format_transcript())

    def test_bare_cr_in_command(self):
        c = self.session()
        c.send(b"MAIL FROM:<a@b.test>\rRCPT TO:<user@example.test>\r\n")
        r = c.reply()
        self.assertNotEqual(r.code, 250, c.format_transcript())
        c.check("RCPT TO:<user@example.test>", 503, "5.5.1")

    def test_command_too_long(self):
        c = self.session()
        c.send(b"NOOP " + b"A" * 5000 + b"\r\n")
        c.expect(c.reply(), 500, "5.5.2", "too long")
        # the tail of an over-long line must never run as a command
        c2 = self.session()
        c2.send(b"X" * 4200 + b"MAIL FROM:<a@b.test>\r\n")
        c2.expect(c2.reply(), 500, "5.5.2", "too long")
        try:
            r = c2.cmd("RCPT TO:<user@example.test>")
        except AssertionError:
            return  # closing the session after an over-long line is fine
        self.assertEqual((r.code, r.enh), (503, "5.5.1"), c2.format_transcript())

    def test_command_line_4000_ok(self):
        c = self.session()
        # a long but legal line (under 4096 octets)
        c.check("NOOP " + "B" * 3900, 250, "2.0.0")
