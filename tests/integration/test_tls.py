"""STARTTLS: swaks --tls, openssl s_client, command injection across the
STARTTLS boundary, state reset and the Received header of TLS sessions."""

import os
import re
import select
import subprocess
import time

import harness
from harness import DaemonTestCase, HOSTNAME, make_message, split_received


class Tls(DaemonTestCase):
    DAEMON_ARGS = dict(tls=True)

    def test_ehlo_offers_starttls(self):
        c = self.connect()
        r = c.ehlo()
        self.assertIn("STARTTLS", r.lines, r.text)
        self.assertEqual(r.full[-1], "250 SMTPUTF8", r.text)

    def test_ehlo_after_tls(self):
        c = self.session()
        c.starttls()
        r = c.ehlo()
        self.assertNotIn("STARTTLS", [l.split()[0] for l in r.lines], r.text)
        self.assertIn("PIPELINING", r.lines, r.text)
        self.assertIn("SIZE 1048576", r.lines, r.text)
        r = c.cmd("STARTTLS")
        self.assertEqual(r.code // 100, 5, c.format_transcript())
        c.check("NOOP", 250)
        c.quit()

    def test_state_reset_after_tls(self):
        c = self.session()
        c.starttls()
        # RFC 3207: the server forgets the EHLO; MAIL needs a new one
        c.check("MAIL FROM:<a@b.test>", 503, "5.5.1")
        c.ehlo()
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        c.quit()

    def test_starttls_injection_rset(self):
        c = self.session()
        c.send(b"STARTTLS\r\nRSET\r\n")
        c.expect(c.reply(), 220, "2.0.0", "ready to start tls")
        if c.buf:
            c.fail("plaintext data after the STARTTLS reply: %r" % c.buf)
        c.tls_handshake()
        c.send(b"EHLO client.example.test\r\n")
        r = c.reply()
        self.assertEqual(r.full[0], "250-" + HOSTNAME, c.format_transcript())
        c.quiet(0.3)
        c.check("NOOP", 250)
        c.quit()

    def test_starttls_injection_mail(self):
        c = self.session()
        c.send(b"STARTTLS\r\nMAIL FROM:<a@b.test>\r\n")
        c.expect(c.reply(), 220, "2.0.0")
        if c.buf:
            c.fail("plaintext data after the STARTTLS reply: %r" % c.buf)
        c.tls_handshake()
        # the injected MAIL must not exist: the first reply inside TLS is
        # the answer to this RCPT
        c.check("RCPT TO:<user@example.test>", 503, "5.5.1")
        c.quiet(0.3)
        c.quit()

    def test_starttls_with_argument(self):
        c = self.session()
        c.check("STARTTLS now", 501, "5.5.4")
        c.check("NOOP", 250)

    def test_delivery_over_tls(self):
        c = self.session()
        c.starttls()
        c.ehlo()
        version = c.sock.version()
        cipher = c.sock.cipher()[0]
        msg = make_message("over tls")
        qid = c.send_mail(msg=msg)
        c.quit()
        received, rest = split_received(self.queue_bodies([qid])[qid])
        self.assertEqual(rest, msg)
        self.assertIn(b"using TLSv1.", received)
        self.assertIn(b"using " + version.encode(), received)
        self.assertIn(cipher.encode(), received)
        self.assertIn(b"id " + qid.encode(), received)

    def test_plaintext_received_has_no_tls(self):
        c = self.session()
        qid = c.send_mail()
        c.quit()
        received, _ = split_received(self.queue_bodies([qid])[qid])
        self.assertNotIn(b"using TLS", received)

    def test_swaks_tls(self):
        cp = harness.run_tool(
            ["swaks", "--server", "127.0.0.1:%d" % self.daemon.port, "--tls",
             "--helo", "client.example.test", "--from", "a@b.test",
             "--to", "user@example.test", "--timeout", "10",
             "--header", "Subject: swaks tls"], timeout=30, check=False)
        out = cp.stdout.decode("utf-8", "replace") + cp.stderr.decode("utf-8", "replace")
        if "TLS" in out and ("not available" in out or "SSLeay" in out):
            self.fail("swaks has no TLS support: install libnet-ssleay-perl and "
                      "libio-socket-ssl-perl\n" + out)
        self.assertEqual(cp.returncode, 0, out)
        self.assertIn("TLS started", out)
        m = re.search(r"<~\s+250 2\.0\.0 Ok: queued as ([0-9A-Z]{16})", out)
        self.assertTrue(m, out)

    def test_openssl_s_client(self):
        args = ["openssl", "s_client", "-starttls", "smtp", "-quiet", "-crlf",
                "-connect", "127.0.0.1:%d" % self.daemon.port,
                "-servername", HOSTNAME]
        with harness.managed_popen(args, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE) as p:
            buf = bytearray()
            transcript = []

            def reply(timeout=10):
                deadline = time.monotonic() + timeout
                lines = []
                while True:
                    while b"\n" not in buf:
                        left = deadline - time.monotonic()
                        r, _, _ = select.select([p.stdout], [], [], max(0, left))
                        if not r:
                            self.fail("s_client: no reply; transcript %r" % transcript)
                        chunk = os.read(p.stdout.fileno(), 65536)
                        if not chunk:
                            self.fail("s_client: EOF; transcript %r, stderr %r"
                                      % (transcript, p.stderr.read1(4000)))
                        transcript.append(("S", bytes(chunk)))
                        buf.extend(chunk)
                    i = buf.index(b"\n") + 1
                    line = bytes(buf[:i])
                    del buf[:i]
                    lines.append(line)
                    if line[3:4] != b"-":
                        return lines

            def cmd(line):
                transcript.append(("C", line))
                p.stdin.write(line + b"\n")
                p.stdin.flush()
                return reply()

            r = cmd(b"EHLO client.example.test")
            self.assertTrue(r[0].startswith(b"250-" + HOSTNAME.encode()), transcript)
            self.assertNotIn(b"STARTTLS", b"".join(r))
            self.assertTrue(cmd(b"MAIL FROM:<a@b.test>")[0].startswith(b"250 2.1.0"))
            self.assertTrue(cmd(b"RCPT TO:<user@example.test>")[0].startswith(b"250 2.1.5"))
            self.assertTrue(cmd(b"DATA")[0].startswith(b"354"))
            for line in (b"Subject: s_client", b"", b"via openssl"):
                transcript.append(("C", line))
                p.stdin.write(line + b"\n")
            r = cmd(b".")
            self.assertRegex(r[0], rb"^250 2\.0\.0 Ok: queued as [0-9A-Z]{16}", transcript)
            self.assertTrue(cmd(b"QUIT")[0].startswith(b"221"))
            p.stdin.close()
            p.wait(10)

    def test_handshake_garbage(self):
        c = self.session()
        c.check("STARTTLS", 220, "2.0.0")
        c.send(b"this is not a TLS ClientHello\r\n" * 4)
        c.read_until_close(10)
        # a client that vanishes right after STARTTLS
        c2 = self.session()
        c2.check("STARTTLS", 220, "2.0.0")
        c2.close()
        # the daemon still serves
        c3 = self.session()
        c3.starttls()
        c3.ehlo()
        c3.quit()
