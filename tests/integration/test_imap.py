"""The IMAP4rev1 server of the catch-all store (RFC 3501, 2177 IDLE, 4315
UIDPLUS): Python imaplib and raw-socket sessions over every command, TLS
policy (LOGINDISABLED before STARTTLS, implicit TLS), and the real pullers
from Debian draining the mailbox: fetchmail (multidrop into per-recipient
files, STARTTLS and implicit TLS, certificates checked against the test
CA), getmail6 (SimpleIMAPSSLRetriever, delete = true) and fdm (UID FETCH
BODY[] without PEEK, deletion through CLOSE)."""

import base64
import email
import imaplib
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

import harness
from catchall_util import CatchallTestCase, make_maildir
from harness import wait_until

# Advertised but not implemented, each would make some client misbehave
# (research notes, section 3.2).
FORBIDDEN_CAPS = (b"AUTH=CRAM-MD5", b"X-GM-EXT-1", b"COMPRESS=DEFLATE", b"NAMESPACE",
                  b"SASL-IR", b"LITERAL+", b"ID")


def msg(n, rcpt="u@catch.test", body=None):
    """A distinct small message."""
    return (b"From: Sender <sender@example.net>\r\n"
            b"To: " + rcpt.encode() + b"\r\n"
            b"Subject: message " + str(n).encode() + b"\r\n"
            b"Message-ID: <" + str(n).encode() + b".%d@example.net>\r\n" % os.getpid() +
            b"Date: Tue, 5 Mar 2024 10:00:00 +0000\r\n"
            b"\r\n" + (body if body is not None else b"Body of message %d.\r\nSecond line.\r\n" % n))


class RawIMAP:
    """A byte-exact IMAP client: commands as written, responses with their
    literals, for what imaplib hides (continuations, pipelining, timing)."""

    def __init__(self, port, ctx=None, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if ctx is not None:
            self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.greeting = self.readline()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionError("server closed the connection; buffered %r" % self.buf[-200:])
        self.buf += d

    def readline(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def response(self):
        """One response line with its literals inlined: (text, [literals])."""
        line = self.readline()
        text, lits = line, []
        m = re.search(rb"\{(\d+)\}$", line)
        while m:
            lit = self.read_exact(int(m.group(1)))
            lits.append(lit)
            more = self.readline()
            text += b"<lit>" + more
            m = re.search(rb"\{(\d+)\}$", more)
        return text, lits

    def until_tagged(self, tag):
        """Untagged responses (text, literals) up to the tagged one."""
        untagged = []
        while True:
            text, lits = self.response()
            if text.startswith(tag + b" "):
                return untagged, text
            untagged.append((text, lits))

    def cmd(self, tag, text):
        if isinstance(text, str):
            text = text.encode()
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def login(self, user="catch", password="secret"):
        _, done = self.cmd(b"L", 'LOGIN %s "%s"' % (user, password))
        assert done.startswith(b"L OK"), done
        return done

    def quiet(self, wait=0.3):
        """Whatever arrives within WAIT seconds (b"" if nothing)."""
        self.sock.settimeout(wait)
        try:
            self._fill()
        except (socket.timeout, TimeoutError):
            pass
        finally:
            self.sock.settimeout(10.0)
        d, self.buf = self.buf, b""
        return d


def ca_context(daemon):
    ctx = ssl.create_default_context(cafile=daemon.ca_file)
    return ctx


class ImapBase(CatchallTestCase):
    """Helpers shared by the classes below; the mailbox is emptied before
    every test."""

    def setUp(self):
        for sub, name in self.daemon.maildir_files():
            os.unlink(os.path.join(self.daemon.maildir, sub, name))

    def imap(self):
        m = imaplib.IMAP4("127.0.0.1", self.daemon.imap_port, timeout=10)
        self.addCleanup(self._shutdown, m)
        return m

    def login(self):
        m = self.imap()
        typ, _ = m.login(self.daemon.mailbox_user, self.daemon.mailbox_password)
        self.assertEqual(typ, "OK")
        return m

    def selected(self):
        m = self.login()
        typ, _ = m.select("INBOX")
        self.assertEqual(typ, "OK")
        return m

    def raw(self, ctx=None):
        r = RawIMAP(self.daemon.imap_port, ctx=ctx)
        self.addCleanup(r.close)
        return r

    @staticmethod
    def _shutdown(m):
        try:
            m.shutdown()
        except Exception:
            pass

    def deliver(self, n, start=1):
        for i in range(start, start + n):
            self.daemon.deliver(["u%d@catch.test" % i], body=msg(i))

    def cur_files(self):
        return sorted(n for s, n in self.daemon.maildir_files() if s == "cur")


class ImapSession(ImapBase):
    DAEMON_ARGS = dict(pop3_tls=None, imap_tls="none", limits={"message_size": "8M"})

    # -- any state, login -------------------------------------------------

    def test_greeting_and_capabilities(self):
        r = self.raw()
        self.assertRegex(r.greeting, rb"^\* OK \[CAPABILITY IMAP4rev1 [^\]]*\] "
                                     rb"mx2\.example\.test IMAP4rev1 ready$")
        for state in ("notauth", "auth", "selected"):
            if state == "auth":
                r.login()
            if state == "selected":
                r.cmd(b"S", "SELECT INBOX")
            untagged, done = r.cmd(b"C", "CAPABILITY")
            self.assertEqual(done, b"C OK CAPABILITY completed")
            self.assertEqual(len(untagged), 1, untagged)
            caps = untagged[0][0].split()[2:]
            self.assertEqual(caps[0], b"IMAP4rev1")
            for c in (b"IDLE", b"UIDPLUS"):
                self.assertIn(c, caps)
            for bad in FORBIDDEN_CAPS:
                self.assertNotIn(bad, [c.upper() for c in caps])
            # A loopback listener without TLS: login allowed, no STARTTLS.
            self.assertNotIn(b"STARTTLS", caps)
            self.assertNotIn(b"LOGINDISABLED", caps)
            if state == "notauth":
                self.assertIn(b"AUTH=PLAIN", caps)

    def test_noop_logout(self):
        r = self.raw()
        self.assertEqual(r.cmd(b"a1", "NOOP")[1], b"a1 OK NOOP completed")
        untagged, done = r.cmd(b"a2", "LOGOUT")
        self.assertEqual([u[0] for u in untagged],
                         [b"* BYE mx2.example.test IMAP4rev1 server logging out"])
        self.assertEqual(done, b"a2 OK LOGOUT completed")
        with self.assertRaises(ConnectionError):
            r.readline()

    def test_login_forms(self):
        # imaplib: an atom user and a quoted password.
        m = self.imap()
        self.assertEqual(m.login("catch", "secret")[0], "OK")
        # Quoted strings.
        r = self.raw()
        self.assertEqual(r.cmd(b"q", r'LOGIN "catch" "secret"')[1][:4], b"q OK")
        # Synchronizing literals for both: "+" before each.
        r = self.raw()
        r.send(b"A1 LOGIN {5}\r\n")
        self.assertEqual(r.readline(), b"+ Ready for literal data")
        r.send(b"catch {6}\r\n")
        self.assertEqual(r.readline(), b"+ Ready for literal data")
        r.send(b"secret\r\n")
        _, done = r.until_tagged(b"A1")
        self.assertTrue(done.startswith(b"A1 OK [CAPABILITY IMAP4rev1"), done)
        self.assertIn(b"Logged in", done)
        # Logged in: LOGIN again is refused.
        self.assertTrue(r.cmd(b"A2", "LOGIN catch secret")[1].startswith(b"A2 BAD"))
        self.daemon.wait_log(r"imap: login: mailbox=catch, client=127\.0\.0\.1, tls=no")

    def test_wrong_password_is_delayed(self):
        r = self.raw()
        t0 = time.monotonic()
        _, done = r.cmd(b"x", "LOGIN catch wrong")
        elapsed = time.monotonic() - t0
        self.assertEqual(done, b"x NO [AUTHENTICATIONFAILED] Authentication failed.")
        self.assertGreaterEqual(elapsed, 0.4)
        # The session goes on: a correct login now works.
        self.assertTrue(r.cmd(b"y", "LOGIN catch secret")[1].startswith(b"y OK"))

    def test_authenticate_plain(self):
        r = self.raw()
        r.send(b"a AUTHENTICATE PLAIN\r\n")
        self.assertEqual(r.readline(), b"+ ")
        r.send(base64.b64encode(b"\0catch\0secret") + b"\r\n")
        _, done = r.until_tagged(b"a")
        self.assertTrue(done.startswith(b"a OK"), done)
        # "*" cancels: BAD.
        r = self.raw()
        r.send(b"b AUTHENTICATE PLAIN\r\n")
        self.assertEqual(r.readline(), b"+ ")
        r.send(b"*\r\n")
        self.assertTrue(r.until_tagged(b"b")[1].startswith(b"b BAD"))
        # No SASL-IR: an initial response is a syntax error; other
        # mechanisms are refused.
        self.assertTrue(r.cmd(b"c", "AUTHENTICATE PLAIN AGNhdGNoAHNlY3JldA==")[1]
                        .startswith(b"c BAD"))
        self.assertTrue(r.cmd(b"d", "AUTHENTICATE CRAM-MD5")[1].startswith(b"d NO"))
        # imaplib's authenticate() works too.
        m = self.imap()
        typ, _ = m.authenticate("PLAIN", lambda _: b"\0catch\0secret")
        self.assertEqual(typ, "OK")

    def test_wrong_state_and_bad_syntax(self):
        r = self.raw()
        cases = [
            ("SELECT INBOX", b"BAD"),         # not logged in
            ("FETCH 1 FLAGS", b"BAD"),
            ("FROBNICATE", b"BAD"),
            ("", b"BAD"),
        ]
        for i, (c, want) in enumerate(cases):
            tag = b"t%d" % i
            self.assertEqual(r.cmd(tag, c)[1].split()[1], want, c)
        r.login()
        self.assertTrue(r.cmd(b"f", "FETCH 1 FLAGS")[1].startswith(b"f BAD"))
        self.assertTrue(r.cmd(b"u", "UID LOGIN x y")[1].startswith(b"u BAD"))
        r.cmd(b"s", "SELECT INBOX")
        for i, c in enumerate(["FETCH", "FETCH 1", "FETCH 0 FLAGS", "FETCH 1 (FLAGS",
                               "FETCH 1 X-GM-MSGID", "STORE 1 FLAGS (\\Recent)",
                               "SEARCH FOO", "SEARCH", "UID", "STATUS INBOX (BOGUS)",
                               "NOOP extra", "LOGIN a b"]):
            tag = b"b%d" % i
            done = r.cmd(tag, c)[1]
            self.assertTrue(done.startswith(tag + b" BAD"), (c, done))
        # Still usable.
        self.assertEqual(r.cmd(b"n", "NOOP")[1], b"n OK NOOP completed")

    def test_limits(self):
        r = self.raw()
        # A line over 8 KB: BAD with the tag, the connection survives.
        r.send(b"long NOOP " + b"x" * 20000 + b"\r\n")
        _, done = r.until_tagged(b"long")
        self.assertTrue(done.startswith(b"long BAD"), done)
        self.assertEqual(r.cmd(b"n1", "NOOP")[1], b"n1 OK NOOP completed")
        # A literal over 64 KB is refused before the client sends it.
        r.send(b"big LOGIN {100000}\r\n")
        _, done = r.until_tagged(b"big")
        self.assertTrue(done.startswith(b"big BAD"), done)
        self.assertEqual(r.cmd(b"n2", "NOOP")[1], b"n2 OK NOOP completed")
        # Non-synchronizing literals are not offered (no LITERAL+).
        r.send(b"plus LOGIN {5+}\r\ncatch secret\r\n")
        _, done = r.until_tagged(b"plus")
        self.assertTrue(done.startswith(b"plus BAD"), done)
        r.quiet(0.3)
        # A NUL in a command.
        self.assertTrue(r.cmd(b"nul", b"NOOP\0")[1].startswith(b"nul BAD"))
        self.assertEqual(r.cmd(b"n3", "NOOP")[1], b"n3 OK NOOP completed")

    def test_pipelined_commands_in_order(self):
        self.deliver(2)
        r = self.raw()
        r.send(b"p1 LOGIN catch secret\r\np2 SELECT INBOX\r\np3 FETCH 1:* (UID)\r\n"
               b"p4 UID SEARCH ALL\r\np5 NOOP\r\np6 LOGOUT\r\n")
        tags = []
        while True:
            try:
                text, _ = r.response()
            except ConnectionError:
                break
            if not text.startswith(b"*"):
                tags.append(text.split()[0:2])
        self.assertEqual(tags, [[b"p%d" % i, b"OK"] for i in range(1, 7)])

    # -- authenticated state ---------------------------------------------

    def test_select_and_examine(self):
        self.deliver(3)
        r = self.raw()
        r.login()
        untagged, done = r.cmd(b"s", 'SELECT "inbox"')
        lines = [u[0] for u in untagged]
        self.assertIn(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)", lines)
        self.assertIn(b"* 3 EXISTS", lines)
        self.assertIn(b"* 3 RECENT", lines)
        self.assertIn(b"* OK [UNSEEN 1] First unseen", lines)
        self.assertTrue(any(re.match(rb"\* OK \[UIDVALIDITY \d+\]", x) for x in lines), lines)
        self.assertTrue(any(re.match(rb"\* OK \[UIDNEXT \d+\]", x) for x in lines), lines)
        self.assertIn(b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)] "
                      b"Limited", lines)
        self.assertEqual(done, b"s OK [READ-WRITE] SELECT completed")
        self.assertNotIn(b"READ-ONLY", b"".join(lines))
        # A literal mailbox name (fdm), and EXAMINE: read-only.
        r.send(b"e EXAMINE {5}\r\n")
        self.assertEqual(r.readline(), b"+ Ready for literal data")
        r.send(b"INBOX\r\n")
        untagged, done = r.until_tagged(b"e")
        self.assertEqual(done, b"e OK [READ-ONLY] EXAMINE completed")
        self.assertIn(b"* OK [PERMANENTFLAGS ()] Limited", [u[0] for u in untagged])
        self.assertTrue(r.cmd(b"st", "STORE 1 +FLAGS (\\Deleted)")[1].startswith(b"st NO"))
        self.assertTrue(r.cmd(b"ex", "EXPUNGE")[1].startswith(b"ex NO"))
        # EXAMINE does not set \Seen.
        r.cmd(b"f", "FETCH 1 BODY[]")
        self.assertFalse(any("S" in n.split(":2,")[1] for n in self.cur_files()))
        # No other mailbox; a failed SELECT leaves the selected state.
        self.assertTrue(r.cmd(b"o", "SELECT Trash")[1].startswith(b"o NO [NONEXISTENT]"))
        self.assertTrue(r.cmd(b"f2", "FETCH 1 FLAGS")[1].startswith(b"f2 BAD"))

    def test_list_lsub_status(self):
        self.deliver(2)
        m = self.login()
        self.assertEqual(m.list(), ("OK", [b'(\\HasNoChildren) "/" INBOX']))
        self.assertEqual(m.list('""', "%"), ("OK", [b'(\\HasNoChildren) "/" INBOX']))
        self.assertEqual(m.list('""', "Trash"), ("OK", [None]))
        self.assertEqual(m.list('""', '""'), ("OK", [b'(\\Noselect) "/" ""']))
        self.assertEqual(m.lsub(), ("OK", [b'() "/" INBOX']))
        typ, data = m.status("INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
        self.assertEqual(typ, "OK")
        self.assertRegex(data[0], rb"^INBOX \(MESSAGES 2 RECENT \d UIDNEXT \d+ "
                                  rb"UIDVALIDITY \d+ UNSEEN 2\)$")
        self.assertEqual(m.status("Trash", "(MESSAGES)")[0], "NO")
        self.assertEqual(m.create("Trash")[0], "NO")
        m.select()
        self.assertEqual(m.check()[0], "OK")

    # -- FETCH ---------------------------------------------------------------

    def test_fetch_items(self):
        body = b"Line one.\r\nLine two.\r\n"
        self.daemon.deliver(["alice@catch.test"], body=msg(1, "alice@catch.test", body))
        (sub, name), = self.daemon.maildir_files()
        raw = self.daemon.read_message(sub, name)
        hdr, text = raw.split(b"\r\n\r\n", 1)
        hdr += b"\r\n\r\n"
        r = self.raw()
        r.login()
        r.cmd(b"s", "SELECT INBOX")
        untagged, done = r.cmd(b"f", "FETCH 1 (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
        self.assertEqual(done, b"f OK FETCH completed")
        self.assertEqual(len(untagged), 1)
        line = untagged[0][0]
        self.assertRegex(line, rb'^\* 1 FETCH \(UID \d+ FLAGS \(\\Recent\) RFC822\.SIZE %d '
                               rb'INTERNALDATE "[ \d]\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}" '
                               rb'ENVELOPE \("Tue, 5 Mar 2024 10:00:00 \+0000" "message 1" '
                               rb'\(\("Sender" NIL "sender" "example.net"\)\) ' % len(raw))
        self.assertIn(b'((NIL NIL "alice" "catch.test")) NIL NIL NIL "<1.', line)
        # Bodies, whole and in parts, one response per message.
        untagged, _ = r.cmd(b"b", "FETCH 1 (BODY.PEEK[] BODY.PEEK[HEADER] BODY.PEEK[TEXT] "
                                  "RFC822.HEADER BODY.PEEK[]<5.10> BODY.PEEK[TEXT]<0.4> "
                                  "BODY.PEEK[]<100000.5> BODY.PEEK[1])")
        self.assertEqual(len(untagged), 1)
        text_line, lits = untagged[0]
        self.assertEqual(lits, [raw, hdr, text, hdr, raw[5:15], text[:4], b"", text])
        self.assertIn(b"BODY[]<5> {10}", text_line)
        self.assertIn(b"BODY[]<100000> {0}", text_line)
        self.assertIn(b"BODY[1] {%d}" % len(text), text_line)
        # Selected header fields, with the blank line.
        untagged, _ = r.cmd(b"h", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject X-Original-To)])")
        self.assertEqual(untagged[0][1], [b"X-Original-To: alice@catch.test\r\n"
                                          b"Subject: message 1\r\n\r\n"])
        self.assertIn(b"BODY[HEADER.FIELDS (SUBJECT X-ORIGINAL-TO)] {", untagged[0][0])
        untagged, _ = r.cmd(b"hn", "FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (Received)]")
        self.assertNotIn(b"Received:", untagged[0][1][0])
        self.assertIn(b"Subject: message 1", untagged[0][1][0])
        # RFC822 and RFC822.TEXT; BODYSTRUCTURE of a one-part text message.
        untagged, _ = r.cmd(b"r", "FETCH 1 (RFC822 RFC822.TEXT BODYSTRUCTURE BODY)")
        self.assertEqual(untagged[0][1], [raw, text])
        self.assertIn(b'BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" '
                      b'%d 2 NIL NIL NIL NIL)' % len(text), untagged[0][0])
        self.assertIn(b'BODY ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d 2)'
                      % len(text), untagged[0][0])
        # Macros.
        for macro in ("ALL", "FAST", "FULL"):
            untagged, done = r.cmd(b"m", "FETCH 1 " + macro)
            self.assertEqual(done, b"m OK FETCH completed", macro)
            self.assertIn(b"RFC822.SIZE %d" % len(raw), untagged[0][0])
        # UID FETCH always includes the UID; unknown UIDs are no error.
        untagged, done = r.cmd(b"u", "UID FETCH 1:* (FLAGS)")
        self.assertRegex(untagged[0][0], rb"^\* 1 FETCH \(UID \d+ FLAGS ")
        untagged, done = r.cmd(b"u2", "UID FETCH 999999 (FLAGS)")
        self.assertEqual((untagged, done), ([], b"u2 OK UID FETCH completed"))
        # A sequence number beyond the mailbox is an error.
        self.assertTrue(r.cmd(b"x", "FETCH 2 FLAGS")[1].startswith(b"x BAD"))
        self.daemon.wait_log(r"imap: fetch: mailbox=catch, uid=\d+, size=\d+, client=127\.0\.0\.1")

    def test_multipart_bodystructure_refused(self):
        mp = (b"From: a@b.test\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
              b"--XX\r\nContent-Type: text/plain\r\n\r\nhi\r\n--XX--\r\n")
        self.daemon.deliver(["u@catch.test"], body=mp)
        m = self.selected()
        typ, data = m.fetch("1", "(BODYSTRUCTURE)")
        self.assertEqual(typ, "NO")
        self.assertEqual(m.fetch("1", "(BODY.PEEK[1])")[1], [b"1 (BODY[1] NIL)"])
        self.assertEqual(m.fetch("1", "(RFC822.SIZE)")[0], "OK")

    def test_seen_set_by_body_not_by_peek(self):
        self.deliver(2)
        r = self.raw()
        r.login()
        r.cmd(b"s", "SELECT INBOX")
        untagged, _ = r.cmd(b"p", "FETCH 1:2 (BODY.PEEK[] RFC822.HEADER BODY.PEEK[TEXT])")
        self.assertEqual(len(untagged), 2)
        self.assertNotIn(b"FLAGS", b"".join(u[0] for u in untagged))
        self.assertFalse(any("S" in n.split(":2,")[1] for n in self.cur_files()))
        # BODY[] sets \Seen, reported with FLAGS in the same response.
        untagged, _ = r.cmd(b"b", "UID FETCH 1:* BODY[]")
        self.assertEqual(len(untagged), 2)
        for text, lits in untagged:
            self.assertRegex(text, rb"^\* \d FETCH \(UID \d+ BODY\[\] \{\d+\}<lit> "
                                   rb"FLAGS \(\\Seen \\Recent\)\)$")
        files = self.cur_files()
        self.assertEqual(len(files), 2)
        for n in files:
            self.assertIn("S", n.split(":2,")[1], n)
        # Persisted: a new session sees \Seen and no \Recent.
        m = self.selected()
        typ, data = m.fetch("1:*", "(FLAGS)")
        self.assertEqual(data, [b"1 (FLAGS (\\Seen))", b"2 (FLAGS (\\Seen))"])
        self.assertEqual(m.search(None, "UNSEEN"), ("OK", [b""]))
        # FETCH RFC822 counts as a body fetch too.
        m.store("1", "-FLAGS", "(\\Seen)")
        typ, data = m.fetch("1", "(RFC822)")
        self.assertIn(b"FLAGS (\\Seen)", data[1])

    def test_large_message_streams(self):
        big = b"".join(b"%07d ........................................................\r\n" % i
                       for i in range(100000))          # about 6.6 MB
        self.daemon.deliver(["u@catch.test"], body=msg(1, body=big))
        (sub, name), = self.daemon.maildir_files()
        raw = self.daemon.read_message(sub, name)
        r = self.raw()
        r.login()
        r.cmd(b"s", "SELECT INBOX")
        untagged, done = r.cmd(b"b", "FETCH 1 (BODY.PEEK[] RFC822.SIZE)")
        self.assertEqual(done, b"b OK FETCH completed")
        self.assertEqual(untagged[0][1][0], raw)
        self.assertTrue(untagged[0][0].endswith(b" RFC822.SIZE %d)" % len(raw)))
        # Pipelined behind a big fetch: answered after it, in order.
        r.send(b"f1 FETCH 1 BODY.PEEK[]<1000000.3000000>\r\nf2 NOOP\r\n")
        untagged, done = r.until_tagged(b"f1")
        self.assertEqual(untagged[0][1][0], raw[1000000:4000000])
        self.assertEqual(r.until_tagged(b"f2")[1], b"f2 OK NOOP completed")

    # -- SEARCH ----------------------------------------------------------------

    def test_search(self):
        self.deliver(6)
        m = self.selected()
        typ, data = m.uid("SEARCH", None, "ALL")
        uids = [int(x) for x in data[0].split()]
        self.assertEqual(len(uids), 6)
        u = uids
        m.uid("STORE", "%d,%d" % (u[1], u[3]), "+FLAGS", "(\\Seen)")
        m.uid("STORE", "%d" % u[4], "+FLAGS", "(\\Deleted)")

        def s(*crit):
            return m.search(None, *crit)[1][0].decode().split()

        def us(*crit):
            return [int(x) for x in m.uid("SEARCH", None, *crit)[1][0].split()]

        self.assertEqual(s("ALL"), ["1", "2", "3", "4", "5", "6"])
        self.assertEqual(s("SEEN"), ["2", "4"])
        self.assertEqual(s("UNSEEN"), ["1", "3", "5", "6"])
        self.assertEqual(s("DELETED"), ["5"])
        self.assertEqual(s("UNSEEN", "UNDELETED"), ["1", "3", "6"])
        self.assertEqual(s("NOT", "SEEN"), ["1", "3", "5", "6"])
        self.assertEqual(s("OR", "SEEN", "DELETED"), ["2", "4", "5"])
        self.assertEqual(s("(SEEN", "2:3)"), ["2"])
        self.assertEqual(s("2:4"), ["2", "3", "4"])
        self.assertEqual(s("*"), ["6"])
        self.assertEqual(s("RECENT"), ["1", "2", "3", "4", "5", "6"])
        self.assertEqual(s("NEW"), ["1", "3", "5", "6"])
        self.assertEqual(s("OLD"), [])
        self.assertEqual(s("ANSWERED"), [])
        self.assertEqual(s("FLAGGED"), [])
        self.assertEqual(s("LARGER", "1"), s("ALL"))
        self.assertEqual(s("SMALLER", "1"), [])
        # UID ranges: "a:b", "b:a", "n:*", sets, beyond the last UID.
        self.assertEqual(us("UID", "%d:%d" % (u[1], u[3])), u[1:4])
        self.assertEqual(us("UID", "%d:%d" % (u[3], u[1])), u[1:4])
        self.assertEqual(us("UID", "%d:*" % u[4]), u[4:])
        self.assertEqual(us("UID", "%d,%d" % (u[0], u[5])), [u[0], u[5]])
        self.assertEqual(us("UID", "%d:*" % (u[5] + 100)), [u[5]])
        self.assertEqual(us("UID", "%d" % (u[5] + 100)), [])
        self.assertEqual(us("UNSEEN", "UID", "%d:*" % u[1]), [u[2], u[4], u[5]])
        # Text and dates.
        self.assertEqual(s("SUBJECT", '"message 3"'), ["3"])
        self.assertEqual(s("HEADER", "X-Original-To", "u2@catch.test"), ["2"])
        self.assertEqual(s("BODY", '"message 4."'), ["4"])
        self.assertEqual(s("TEXT", "u6@CATCH.test"), ["6"])
        self.assertEqual(s("FROM", "sender@example.net"), s("ALL"))
        self.assertEqual(s("SENTON", "5-Mar-2024"), s("ALL"))
        self.assertEqual(s("SENTBEFORE", "5-Mar-2024"), [])
        self.assertEqual(s("SINCE", "1-Jan-2000"), s("ALL"))
        self.assertEqual(s("BEFORE", "1-Jan-2000"), [])
        self.assertEqual(m.search("UTF-8", "ALL")[0], "OK")
        self.assertEqual(m.search("KOI8-R", "ALL")[0], "NO")

    # -- STORE, EXPUNGE, CLOSE ------------------------------------------------

    def test_store_forms(self):
        self.deliver(3)
        r = self.raw()
        r.login()
        r.cmd(b"s", "SELECT INBOX")
        untagged, done = r.cmd(b"a", "STORE 1 +FLAGS (\\Seen \\Deleted)")
        self.assertEqual([u[0] for u in untagged],
                         [b"* 1 FETCH (FLAGS (\\Deleted \\Seen \\Recent))"])
        untagged, _ = r.cmd(b"b", "STORE 1 -FLAGS \\Deleted")
        self.assertEqual(untagged[0][0], b"* 1 FETCH (FLAGS (\\Seen \\Recent))")
        untagged, _ = r.cmd(b"c", "STORE 1:2 FLAGS (\\Flagged \\Answered)")
        self.assertEqual([u[0] for u in untagged],
                         [b"* 1 FETCH (FLAGS (\\Answered \\Flagged \\Recent))",
                          b"* 2 FETCH (FLAGS (\\Answered \\Flagged \\Recent))"])
        untagged, done = r.cmd(b"d", "STORE 3 +FLAGS.SILENT (\\Draft $Keyword)")
        self.assertEqual((untagged, done), ([], b"d OK STORE completed"))
        untagged, _ = r.cmd(b"e", "UID STORE 1:* -FLAGS (\\Answered)")
        self.assertEqual(len(untagged), 3)
        self.assertRegex(untagged[0][0], rb"^\* 1 FETCH \(UID \d+ FLAGS \(\\Flagged \\Recent\)\)$")
        flags = sorted(n.split(":2,")[1] for n in self.cur_files())
        self.assertEqual(flags, ["D", "F", "F"])

    def test_expunge_counts(self):
        self.deliver(5)
        m = self.selected()
        m.store("2,3,5", "+FLAGS", "(\\Deleted)")
        typ, data = m.expunge()
        # Highest first, so each number is right as sent: 5, 3, 2.
        self.assertEqual((typ, data), ("OK", [b"5", b"3", b"2"]))
        self.assertEqual(len(self.cur_files()), 2)
        self.assertEqual(m.search(None, "ALL")[1], [b"1 2"])
        # Nothing to expunge: no untagged response.
        self.assertEqual(m.expunge(), ("OK", [None]))
        self.daemon.wait_log(r"imap: expunge: mailbox=catch, uid=\d+, client=127\.0\.0\.1")

    def test_fetchmail_style_expunge_after_each(self):
        """fetchmail: STORE n +FLAGS (\\Seen \\Deleted), EXPUNGE, always
        message 1 next."""
        self.deliver(3)
        r = self.raw()
        r.login()
        r.cmd(b"s", "SELECT INBOX")
        r.cmd(b"e0", "EXPUNGE")
        self.assertEqual(r.cmd(b"q", "SEARCH UNSEEN")[0][0][0], b"* SEARCH 1 2 3")
        for i in range(3):
            r.cmd(b"h", "FETCH 1 RFC822.HEADER")
            r.cmd(b"t", "FETCH 1 BODY.PEEK[TEXT]")
            r.cmd(b"st", "STORE 1 +FLAGS (\\Seen \\Deleted)")
            untagged, done = r.cmd(b"x", "EXPUNGE")
            self.assertEqual([u[0] for u in untagged], [b"* 1 EXPUNGE"])
        self.assertEqual(self.cur_files(), [])

    def test_uid_expunge(self):
        self.deliver(4)
        r = self.raw()
        r.login()
        r.cmd(b"s", "SELECT INBOX")
        uids = [int(x) for x in r.cmd(b"u", "UID SEARCH ALL")[0][0][0].split()[2:]]
        r.cmd(b"st", "STORE 1:* +FLAGS.SILENT (\\Deleted)")
        untagged, done = r.cmd(b"x", "UID EXPUNGE %d:%d" % (uids[1], uids[2]))
        self.assertEqual([u[0] for u in untagged], [b"* 3 EXPUNGE", b"* 2 EXPUNGE"])
        self.assertEqual(done, b"x OK EXPUNGE completed")
        self.assertEqual(len(self.cur_files()), 2)
        untagged, _ = r.cmd(b"u2", "UID SEARCH ALL")
        self.assertEqual(untagged[0][0], b"* SEARCH %d %d" % (uids[0], uids[3]))

    def test_close_expunges_silently(self):
        self.deliver(3)
        r = self.raw()
        r.login()
        r.cmd(b"s", "SELECT INBOX")
        r.cmd(b"st", "STORE 1,3 +FLAGS.SILENT (\\Deleted)")
        untagged, done = r.cmd(b"c", "CLOSE")
        self.assertEqual((untagged, done), ([], b"c OK CLOSE completed"))
        self.assertEqual(len(self.cur_files()), 1)
        # Back in the authenticated state.
        self.assertTrue(r.cmd(b"f", "FETCH 1 FLAGS")[1].startswith(b"f BAD"))
        untagged, _ = r.cmd(b"s2", "SELECT INBOX")
        self.assertIn(b"* 1 EXISTS", [u[0] for u in untagged])
        # CLOSE after EXAMINE removes nothing.
        r.cmd(b"st2", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        r.cmd(b"e", "EXAMINE INBOX")
        r.cmd(b"c2", "CLOSE")
        self.assertEqual(len(self.cur_files()), 1)

    # -- new mail: NOOP and IDLE ------------------------------------------

    def test_noop_reports_new_mail(self):
        self.deliver(1)
        r = self.raw()
        r.login()
        r.cmd(b"s", "SELECT INBOX")
        self.deliver(2, start=2)
        # Not in the middle of a FETCH or SEARCH ...
        untagged, _ = r.cmd(b"f", "FETCH 1 FLAGS")
        self.assertEqual(len(untagged), 1)
        untagged, _ = r.cmd(b"q", "SEARCH ALL")
        self.assertEqual([u[0] for u in untagged], [b"* SEARCH 1"])
        # ... but at NOOP.
        untagged, _ = r.cmd(b"n", "NOOP")
        self.assertEqual([u[0] for u in untagged], [b"* 3 EXISTS", b"* 3 RECENT"])
        self.deliver(1, start=4)
        untagged, _ = r.cmd(b"c", "CHECK")
        self.assertEqual([u[0] for u in untagged], [b"* 4 EXISTS", b"* 4 RECENT"])

    def test_idle_sees_delivery(self):
        self.deliver(1)
        r = self.raw()
        r.login()
        r.cmd(b"s", "SELECT INBOX")
        r.send(b"i IDLE\r\n")
        self.assertEqual(r.readline(), b"+ idling")
        self.assertEqual(r.quiet(0.3), b"")
        self.daemon.deliver(["late@catch.test"], body=msg(2))
        self.assertEqual(r.readline(), b"* 2 EXISTS")
        self.assertEqual(r.readline(), b"* 2 RECENT")
        r.send(b"DONE\r\n")
        self.assertEqual(r.until_tagged(b"i"), ([], b"i OK IDLE terminated"))
        untagged, _ = r.cmd(b"f", "FETCH 2 BODY.PEEK[HEADER.FIELDS (X-Original-To)]")
        self.assertEqual(untagged[0][1], [b"X-Original-To: late@catch.test\r\n\r\n"])
        # Mail that came before IDLE is reported when it starts.
        self.deliver(1, start=3)
        r.send(b"j IDLE\r\n")
        self.assertEqual(r.readline(), b"+ idling")
        self.assertEqual(r.readline(), b"* 3 EXISTS")
        r.send(b"bogus\r\n")
        _, done = r.until_tagged(b"j")
        self.assertTrue(done.startswith(b"j BAD"), done)

    def test_disconnects_mid_way(self):
        """Connections dropped while idling, inside a literal, during a
        streamed FETCH or a login delay: nothing may outlive its session
        (the sanitizer build checks) and later deliveries still work."""
        big = b"x" * 998 + b"\r\n"
        self.daemon.deliver(["u@catch.test"], body=msg(1, body=big * 3000))
        idler = self.raw()
        idler.login()
        idler.cmd(b"s", "SELECT INBOX")
        idler.send(b"i IDLE\r\n")
        self.assertEqual(idler.readline(), b"+ idling")
        streamer = self.raw()
        streamer.login()
        streamer.cmd(b"s", "SELECT INBOX")
        streamer.send(b"f FETCH 1 BODY.PEEK[]\r\n")
        streamer.readline()
        literal = self.raw()
        literal.send(b"l LOGIN {5}\r\n")
        literal.readline()
        literal.send(b"ca")
        delayed = self.raw()
        delayed.send(b"d LOGIN catch wrong\r\n")
        for r in (idler, streamer, literal, delayed):
            r.close()
        time.sleep(0.2)
        self.deliver(1, start=2)          # the idler's watch must be gone
        time.sleep(1.0)                   # past the login delay
        m = self.selected()
        self.assertEqual(m.search(None, "ALL")[1], [b"1 2"])

    def test_garbage(self):
        r = self.raw()
        r.send(bytes(range(256)) * 4 + b"\r\n")
        r.send(b"\r\n\r\n* \r\n+ \r\na\r\na \r\n) NOOP\r\n\xff\xfe NOOP\r\n")
        r.send(b"GET / HTTP/1.0\r\n\r\n")
        lines = r.quiet(1.0).split(b"\r\n")
        self.assertTrue(all(l == b"" or b" BAD " in l for l in lines), lines)
        # 20 errors end the session with a BYE.
        r.send(b"x FROB\r\n" * 30)
        data = b""
        try:
            while True:
                data += r.read_exact(1)
        except ConnectionError:
            pass
        self.assertIn(b"* BYE Too many invalid commands", data)


class ImapStartTLS(ImapBase):
    DAEMON_ARGS = dict(pop3_tls=None, imap_tls="starttls", limits={"message_size": "8M"})

    def test_login_refused_before_starttls(self):
        r = self.raw()
        self.assertIn(b"STARTTLS", r.greeting)
        self.assertIn(b"LOGINDISABLED", r.greeting)
        self.assertNotIn(b"AUTH=PLAIN", r.greeting)
        _, done = r.cmd(b"l", "LOGIN catch secret")
        self.assertTrue(done.startswith(b"l NO"), done)
        _, done = r.cmd(b"a", "AUTHENTICATE PLAIN")
        self.assertTrue(done.startswith(b"a NO"), done)
        self.assertTrue(r.cmd(b"s", "SELECT INBOX")[1].startswith(b"s BAD"))

    def test_starttls_then_login(self):
        r = self.raw()
        # A command pipelined behind STARTTLS is discarded, not run in TLS.
        r.send(b"t STARTTLS\r\nx NOOP\r\n")
        self.assertEqual(r.readline(), b"t OK Begin TLS negotiation now")
        r.sock = ca_context(self.daemon).wrap_socket(r.sock, server_hostname="localhost")
        untagged, done = r.cmd(b"c", "CAPABILITY")
        caps = untagged[0][0].split()
        self.assertIn(b"AUTH=PLAIN", caps)
        self.assertNotIn(b"STARTTLS", caps)
        self.assertNotIn(b"LOGINDISABLED", caps)
        self.assertEqual(r.quiet(0.3), b"")            # no answer for "x"
        self.assertTrue(r.login().startswith(b"L OK"))
        self.assertTrue(r.cmd(b"t2", "STARTTLS")[1].startswith(b"t2 BAD"))
        self.daemon.wait_log(r"imap: login: mailbox=catch, client=127\.0\.0\.1, tls=yes")

    def test_large_fetch_and_logout_over_starttls(self):
        """Behind the TLS filter the output waits in the socket buffer
        below: the FETCH must neither stall nor lose bytes, and LOGOUT's
        answer must arrive before the close."""
        big = b"".join(b"%07d ........................................................\r\n" % i
                       for i in range(50000))           # about 3.3 MB
        self.daemon.deliver(["u@catch.test"], body=msg(1, body=big))
        (sub, name), = self.daemon.maildir_files()
        raw = self.daemon.read_message(sub, name)
        r = self.raw()
        r.send(b"t STARTTLS\r\n")
        self.assertEqual(r.readline(), b"t OK Begin TLS negotiation now")
        r.sock = ca_context(self.daemon).wrap_socket(r.sock, server_hostname="localhost")
        r.login()
        r.cmd(b"s", "SELECT INBOX")
        untagged, done = r.cmd(b"f", "FETCH 1 (BODY.PEEK[] BODY.PEEK[]<1000.2000000>)")
        self.assertEqual(done, b"f OK FETCH completed")
        self.assertEqual(untagged[0][1], [raw, raw[1000:2001000]])
        untagged, done = r.cmd(b"o", "LOGOUT")
        self.assertEqual(done, b"o OK LOGOUT completed")

    def test_imaplib_starttls(self):
        self.deliver(1)
        m = self.imap()
        m.starttls(ssl_context=ca_context(self.daemon))
        m.login("catch", "secret")
        m.select()
        typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (Subject)])")
        self.assertEqual(data[0][1], b"Subject: message 1\r\n\r\n")


class ImapImplicitTLS(ImapBase):
    DAEMON_ARGS = dict(pop3_tls=None, imap_tls="implicit")

    def test_implicit_tls(self):
        self.deliver(2)
        m = imaplib.IMAP4_SSL("127.0.0.1", self.daemon.imap_port,
                              ssl_context=ca_context(self.daemon), timeout=10)
        self.addCleanup(self._shutdown, m)
        self.assertNotIn("STARTTLS", m.capabilities)
        self.assertIn("AUTH=PLAIN", m.capabilities)
        m.login("catch", "secret")
        self.assertEqual(m.select()[1], [b"2"])
        self.assertEqual(m.search(None, "ALL")[1], [b"1 2"])


# --- real pullers ------------------------------------------------------------

MDA = """#!/bin/sh
# fetchmail --mda: one file per message under OUT/<recipient>/
d="%s/$1"
mkdir -p "$d" || exit 75
f=$(mktemp "$d/msg.XXXXXX") || exit 75
cat > "$f" || exit 75
"""


class PullerBase(ImapBase):
    """Messages to several recipients, then a real client drains them."""

    RCPTS = ["alice@catch.test", "bob@catch.test", "carol@catch.test"]

    def fill(self, n_per_rcpt=2):
        expected = {}
        k = 0
        for rcpt in self.RCPTS:
            for _ in range(n_per_rcpt):
                k += 1
                self.daemon.deliver([rcpt], body=msg(k, rcpt))
                expected.setdefault(rcpt.split("@")[0], set()).add("message %d" % k)
        # and one message to two recipients: one copy each
        k += 1
        self.daemon.deliver(self.RCPTS[:2], body=msg(k, "team@catch.test"))
        for rcpt in self.RCPTS[:2]:
            expected[rcpt.split("@")[0]].add("message %d" % k)
        return expected

    def workdir(self):
        """A temp dir for the client, owned by the user it runs as."""
        d = tempfile.mkdtemp(prefix="bmx-imap-client-", dir="/tmp")
        self.addCleanup(shutil.rmtree, d, True)
        os.chmod(d, 0o755)
        if self.client_ids():
            os.chown(d, *self.client_ids())
        return d

    @staticmethod
    def client_ids():
        """getmail and fdm refuse to deliver as root: run them as nobody."""
        if not harness.is_root():
            return None
        import pwd
        pw = pwd.getpwnam("nobody")
        return (pw.pw_uid, pw.pw_gid)

    def run_client(self, args, work, env=None):
        """Runs a puller as client_ids(); returns (exit status, output)."""
        cp = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=120, cwd=work, preexec_fn=harness.as_ids_fn(self.client_ids()),
                            env=dict(os.environ, HOME=work, **(env or {})))
        return cp.returncode, cp.stdout.decode("utf-8", "replace")

    def chown_tree(self, top):
        if not self.client_ids():
            return
        for d, dirs, files in os.walk(top):
            for n in dirs + files:
                os.chown(os.path.join(d, n), *self.client_ids())

    def assert_drained(self):
        wait_until(lambda: self.daemon.maildir_files() == [], 5,
                   "mailbox empty", detail=lambda: self.daemon.maildir_files())


def require(tool):
    if shutil.which(tool) is None:
        raise unittest.SkipTest("%s is not installed (tests/install-deps.sh)" % tool)


def subjects_by_dir(out):
    got = {}
    for rcpt in sorted(os.listdir(out)):
        for f in os.listdir(os.path.join(out, rcpt)):
            with open(os.path.join(out, rcpt, f), "rb") as fh:
                m = email.message_from_bytes(fh.read())
            # %T is the whole recipient address.
            got.setdefault(rcpt.split("@")[0], []).append(m["Subject"])
    return got


class FetchmailMixin:
    def run_fetchmail(self, ssl_lines):
        require("fetchmail")
        expected = self.fill()
        work = self.workdir()
        out = os.path.join(work, "out")
        os.mkdir(out)
        mda = os.path.join(work, "mda.sh")
        with open(mda, "w") as f:
            f.write(MDA % out)
        os.chmod(mda, 0o755)
        rc = os.path.join(work, "fetchmailrc")
        with open(rc, "w") as f:
            f.write('poll 127.0.0.1 with proto IMAP port %d\n'
                    '    envelope "X-Original-To"\n'
                    '    localdomains catch.test\n'
                    '    no dns\n'
                    '  user "catch" there with password "secret" to * here\n'
                    '    %s\n'
                    '    sslcertck sslcertfile "%s" sslcommonname "localhost"\n'
                    '    fetchall\n'
                    '    mda "%s %%T"\n'
                    % (self.daemon.imap_port, ssl_lines, self.daemon.ca_file, mda))
        os.chmod(rc, 0o600)
        env = dict(os.environ, FETCHMAILHOME=work, HOME=work)
        cp = subprocess.run(["fetchmail", "-f", rc, "--nosyslog", "-v", "--nodetach",
                             "--pidfile", os.path.join(work, "fetchmail.pid")],
                            env=env, cwd=work, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=120)
        log = cp.stdout.decode("utf-8", "replace")
        self.assertEqual(cp.returncode, 0, log[-4000:])
        got = subjects_by_dir(out)
        self.assertEqual({k: sorted(v) for k, v in got.items()},
                         {k: sorted(v) for k, v in expected.items()}, log[-4000:])
        self.assert_drained()
        return log


class FetchmailStartTLS(FetchmailMixin, PullerBase):
    DAEMON_ARGS = dict(pop3_tls=None, imap_tls="starttls")

    def test_fetchmail_imap_starttls_multidrop(self):
        log = self.run_fetchmail('sslproto "tls1.2+"')
        self.assertIn("STARTTLS", log)


class FetchmailImplicitTLS(FetchmailMixin, PullerBase):
    DAEMON_ARGS = dict(pop3_tls=None, imap_tls="implicit")

    def test_fetchmail_imap_ssl_multidrop(self):
        self.run_fetchmail("ssl")


class Getmail(PullerBase):
    DAEMON_ARGS = dict(pop3_tls=None, imap_tls="implicit")

    def test_getmail_imap_ssl_delete(self):
        require("getmail")
        expected = self.fill()
        work = self.workdir()
        maildir = make_maildir(os.path.join(work, "Maildir"))
        rc = os.path.join(work, "getmailrc")
        with open(rc, "w") as f:
            f.write("[retriever]\n"
                    "type = SimpleIMAPSSLRetriever\n"
                    "server = 127.0.0.1\n"
                    "port = %d\n"
                    "username = catch\n"
                    "password = secret\n"
                    "ca_certs = %s\n"
                    "mailboxes = (\"INBOX\",)\n"
                    "[destination]\n"
                    "type = Maildir\n"
                    "path = %s/\n"
                    "[options]\n"
                    "delete = true\n"
                    "read_all = true\n"
                    "verbose = 2\n"
                    % (self.daemon.imap_port, self.daemon.ca_file, maildir))
        self.chown_tree(work)
        status, log = self.run_client(["getmail", "--getmaildir", work, "--rcfile", rc], work)
        self.assertEqual(status, 0, log[-4000:])
        got = {}
        for sub in ("new", "cur"):
            for n in os.listdir(os.path.join(maildir, sub)):
                with open(os.path.join(maildir, sub, n), "rb") as fh:
                    m = email.message_from_bytes(fh.read())
                got.setdefault(m["X-Original-To"].split("@")[0], []).append(m["Subject"])
        self.assertEqual({k: sorted(v) for k, v in got.items()},
                         {k: sorted(v) for k, v in expected.items()}, log[-4000:])
        self.assert_drained()


class Fdm(PullerBase):
    DAEMON_ARGS = dict(pop3_tls=None, imap_tls="implicit")

    def test_fdm_imaps_uid_fetch_body_and_close(self):
        require("fdm")
        expected = self.fill()
        work = self.workdir()
        maildir = os.path.join(work, "Maildir")
        conf = os.path.join(work, "fdm.conf")
        with open(conf, "w") as f:
            f.write('set lock-file "%s/fdm.lock"\n'
                    'set verify-certificates\n'
                    'account "catch" imaps server "127.0.0.1" port %d '
                    'user "catch" pass "secret"\n'
                    'action "keep" maildir "%s"\n'
                    'match all action "keep"\n'
                    % (work, self.daemon.imap_port, maildir))
        os.chmod(conf, 0o600)
        self.chown_tree(work)
        mark = self.daemon.log_mark()
        # fdm verifies against OpenSSL's default paths, which SSL_CERT_FILE
        # points at the test CA.
        status, log = self.run_client(["fdm", "-vvvv", "-f", conf, "fetch"], work,
                                      env={"SSL_CERT_FILE": self.daemon.ca_file})
        self.assertEqual(status, 0, log[-4000:])
        got = {}
        for sub in ("new", "cur"):
            for n in os.listdir(os.path.join(maildir, sub)):
                with open(os.path.join(maildir, sub, n), "rb") as fh:
                    m = email.message_from_bytes(fh.read())
                got.setdefault(m["X-Original-To"].split("@")[0], []).append(m["Subject"])
        self.assertEqual({k: sorted(v) for k, v in got.items()},
                         {k: sorted(v) for k, v in expected.items()}, log[-4000:])
        self.assert_drained()
        # fdm fetched with BODY[] (not PEEK) and deleted through CLOSE.
        self.assertRegex(log, r"> \d+ UID FETCH \d+ BODY\[\]")
        self.assertRegex(log, r"> \d+ CLOSE")
        self.assertRegex(self.daemon.log(mark), r"imap: expunge: mailbox=catch")


if __name__ == "__main__":
    unittest.main()
