"""POP3 server of the catch-all mailboxes (RFC 1939, 2449, 2595, 3206, 5034).

Python poplib and a byte-exact raw client cover every command; fetchmail
(STLS and implicit TLS, multidrop into per-recipient files), getmail6
(SimplePOP3SSLRetriever) and mpop (pipelined RETR/DELE) from Debian drain
the mailbox for real.
"""

import contextlib
import os
import poplib
import re
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

import harness
from catchall_util import CatchallDaemon, CatchallTestCase, make_maildir

UIDL_RE = re.compile(r"^[0-9a-f]{16}$")
CAPA_ALWAYS = ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
               "EXPIRE NEVER", "LOGIN-DELAY 0", "IMPLEMENTATION backupmx")


# --- helpers ---------------------------------------------------------------

_drop_seq = [0]


def _ensure_dir(path, ids):
    """Creates PATH and its missing parents, owned by the daemon's user."""
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        os.mkdir(d, 0o700)
        if ids:
            os.chown(d, *ids)


def drop(daemon, data):
    """Puts DATA (bytes with CRLF line ends) into the mailbox as another
    delivery agent would: written in tmp/, renamed into new/, with the
    exact ,S=,W= sizes, owned by the daemon's user. Returns the name."""
    ids = daemon.run_ids
    for sub in ("tmp", "new", "cur"):
        _ensure_dir(os.path.join(daemon.maildir, sub), ids)
    _drop_seq[0] += 1
    name = "%d.M%dP%dQ%d.pop3test,S=%d,W=%d" % (
        time.time(), _drop_seq[0], os.getpid(), _drop_seq[0], len(data), len(data))
    tmp = os.path.join(daemon.maildir, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    if ids:
        os.chown(tmp, *ids)
    os.rename(tmp, os.path.join(daemon.maildir, "new", name))
    return name


def empty_mailbox(daemon):
    for sub, name in daemon.maildir_files():
        os.unlink(os.path.join(daemon.maildir, sub, name))


def message(subject, body=b"Hello.\r\n", extra=b""):
    return (b"From: <sender@example.net>\r\nTo: <user@catch.test>\r\n"
            b"Subject: " + subject.encode() + b"\r\n" + extra + b"\r\n" + body)


def big_body(size, tag):
    """About SIZE bytes of CRLF lines, some starting with dots."""
    lines = []
    n = 0
    i = 0
    while n < size:
        prefix = (b".", b"..", b"", b"")[i % 4]
        line = prefix + b"%s line %d " % (tag.encode(), i) + b"x" * (i % 70) + b"\r\n"
        lines.append(line)
        n += len(line)
        i += 1
    return b"".join(lines)


def unstuff(lines):
    """Multi-line response lines (CRLF kept, terminator removed) -> bytes."""
    return b"".join(l[1:] if l.startswith(b".") else l for l in lines)


def tls_context(daemon):
    """Verifies the server against the test CA, for host name localhost."""
    ctx = ssl.create_default_context(cafile=daemon.ca_file)
    return ctx


class RawPop:
    """POP3 over a socket, byte-exact, with a transcript for failures."""

    def __init__(self, port, timeout=15.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        self.transcript = []

    def fail(self, msg):
        out = []
        for d, data in self.transcript[-30:]:
            if len(data) > 400:
                data = data[:200] + b"...(%d bytes)..." % len(data) + data[-100:]
            out.append("%s %r" % (d, data))
        raise AssertionError(msg + "\n--- transcript ---\n" + "\n".join(out))

    def send(self, data):
        self.transcript.append(("C:", data))
        self.sock.sendall(data)

    def _fill(self):
        try:
            chunk = self.sock.recv(262144)
        except socket.timeout:
            self.fail("timeout waiting for the server")
        if not chunk:
            self.fail("connection closed by the server")
        self.transcript.append(("S:", chunk[:300]))
        self.buf += chunk

    def line(self):
        while b"\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\n") + 1
        line, self.buf = self.buf[:i], self.buf[i:]
        if not line.endswith(b"\r\n"):
            self.fail("line without CRLF: %r" % line)
        return line

    def multi(self):
        """The lines of a multi-line body up to (without) ".\\r\\n"."""
        lines = []
        while True:
            l = self.line()
            if l == b".\r\n":
                return lines
            lines.append(l)

    def cmd(self, text):
        self.send(text.encode() + b"\r\n")
        return self.line()

    def expect_ok(self, text):
        r = self.cmd(text)
        if not r.startswith(b"+OK"):
            self.fail("%s: expected +OK, got %r" % (text, r))
        return r

    def login(self, user="catch", password="secret"):
        self.expect_ok("USER " + user)
        self.expect_ok("PASS " + password)

    def quiet(self, wait=0.5):
        """Fails if the server sends anything within WAIT seconds."""
        if self.buf:
            self.fail("unexpected data: %r" % self.buf)
        r, _, _ = select.select([self.sock], [], [], wait)
        if r:
            self.sock.settimeout(1)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                return
            finally:
                self.sock.settimeout(self.timeout)
            if chunk:
                self.transcript.append(("S:", chunk))
                self.fail("unexpected data: %r" % chunk)

    def starttls(self, ctx):
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()


class Pop3Case(CatchallTestCase):
    """Helpers shared by the POP3 test classes."""

    def setUp(self):
        empty_mailbox(self.daemon)

    def raw(self, greet=True):
        r = RawPop(self.daemon.pop3_port)
        self.addCleanup(r.close)
        if greet:
            g = r.line()
            self.assertTrue(g.startswith(b"+OK"), g)
        return r

    def pop(self):
        p = poplib.POP3("127.0.0.1", self.daemon.pop3_port, timeout=15)
        self.addCleanup(self._close_pop, p)
        return p

    def pop_ssl(self):
        p = poplib.POP3_SSL("localhost", self.daemon.pop3_port, timeout=15,
                            context=tls_context(self.daemon))
        self.addCleanup(self._close_pop, p)
        return p

    @staticmethod
    def _close_pop(p):
        with contextlib.suppress(Exception):
            p.close()

    def login(self, p):
        p.user(self.daemon.mailbox_user)
        p.pass_(self.daemon.mailbox_password)
        return p

    def capa(self, p):
        resp, lines, _ = p._longcmd("CAPA")
        return [l.decode() for l in lines]

    def stored(self):
        """{name: bytes} of the messages in the Maildir."""
        return {n: self.daemon.read_message(s, n) for s, n in self.daemon.maildir_files()}

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="bmx-pop3-", dir="/tmp")
        self.addCleanup(shutil.rmtree, d, True)
        return d


# --- plaintext on loopback (login allowed without TLS) ----------------------------

class TestPop3Commands(Pop3Case):
    DAEMON_ARGS = dict(pop3_tls="none", imap_tls=None)

    def test_greeting_and_capa(self):
        r = self.raw(greet=False)
        g = r.line()
        self.assertEqual(g, b"+OK mx2.example.test POP3 ready\r\n")
        # no APOP timestamp: fdm and mpop would try APOP
        self.assertNotIn(b"<", g)
        self.assertEqual(r.cmd("CAPA"), b"+OK Capability list follows\r\n")
        capa = [l.decode().rstrip("\r\n") for l in r.multi()]
        for c in CAPA_ALWAYS + ("USER", "SASL PLAIN"):
            self.assertIn(c, capa)
        self.assertNotIn("STLS", capa)   # a tls = "none" listener
        self.assertFalse(any("CRAM" in c or "APOP" in c for c in capa), capa)
        r.login()
        self.assertEqual(r.cmd("CAPA"), b"+OK Capability list follows\r\n")
        capa = [l.decode().rstrip("\r\n") for l in r.multi()]
        for c in CAPA_ALWAYS:
            self.assertIn(c, capa)

    def test_stat_list_uidl_retr(self):
        msgs = [message("m%d" % i, body=b"body %d\r\n" % i * (i + 1)) for i in range(3)]
        for m in msgs:
            drop(self.daemon, m)
        p = self.login(self.pop())
        count, size = p.stat()
        self.assertEqual((count, size), (3, sum(len(m) for m in msgs)))
        resp, lines, _ = p.list()
        self.assertTrue(resp.startswith(b"+OK"), resp)
        self.assertEqual(lines, [b"%d %d" % (i + 1, len(m)) for i, m in enumerate(msgs)])
        self.assertEqual(p.list(2), b"+OK 2 %d" % len(msgs[1]))
        resp, uidls, _ = p.uidl()
        self.assertEqual([u.split()[0] for u in uidls], [b"1", b"2", b"3"])
        ids = [u.split()[1].decode() for u in uidls]
        for u in ids:
            self.assertRegex(u, UIDL_RE)
        self.assertEqual(len(set(ids)), 3)
        # %08X%08X: increasing uids, one uidvalidity
        self.assertEqual(len({u[8:] for u in ids}), 1)
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(p.uidl(3), b"+OK 3 " + ids[2].encode())
        for i, m in enumerate(msgs):
            resp, lines, octets = p.retr(i + 1)
            self.assertEqual(resp, b"+OK %d octets" % len(m))
            self.assertEqual(b"\r\n".join(lines) + b"\r\n", m)
        for bad in ("LIST 4", "LIST 0", "UIDL 9", "RETR 4", "DELE 0", "LIST x", "RETR",
                    "TOP 1", "TOP 4 0", "TOP 1 x"):
            with self.assertRaises(poplib.error_proto, msg=bad):
                p._shortcmd(bad)
        p.quit()
        self.assertEqual(len(self.daemon.maildir_files()), 3)

    def test_uidl_matches_dovecot_uidlist(self):
        for i in range(2):
            drop(self.daemon, message("u%d" % i))
        p = self.login(self.pop())
        _, uidls, _ = p.uidl()
        p.quit()
        with open(os.path.join(self.daemon.maildir, "dovecot-uidlist")) as f:
            header = f.readline().split()
            rest = f.read().splitlines()
        self.assertEqual(header[0], "3")
        validity = int([h for h in header if h.startswith("V")][0][1:])
        uids = [int(line.split()[0]) for line in rest if line.strip()]
        known = {"%08x%08x" % (uid, validity) for uid in uids}
        # each UIDL is Dovecot's %08Xu%08Xv of an entry of the uidlist
        for u in uidls:
            self.assertIn(u.split()[1].decode(), known)

    def test_top(self):
        head = (b"From: <sender@example.net>\r\nSubject: top\r\n"
                b"X-Folded: a\r\n  b\r\n\r\n")
        body = b"line 1\r\n.line 2\r\n\r\nline 4\r\n"
        drop(self.daemon, head + body)
        p = self.login(self.pop())
        resp, lines, _ = p.top(1, 0)
        self.assertTrue(resp.startswith(b"+OK"))
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", head)
        _, lines, _ = p.top(1, 2)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", head + b"line 1\r\n.line 2\r\n")
        # fetchmail retrieves with TOP n 99999999
        _, lines, _ = p.top(1, 99999999)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", head + body)
        _, lines, _ = p.top(1, 10 ** 30)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", head + body)

    def test_dot_stuffing_on_the_wire(self):
        body = b".one\r\n..two\r\n.\r\nmid . dle\r\n. \r\n"
        m = message("dots", body=body)
        drop(self.daemon, m)
        drop(self.daemon, b"Subject: no final newline\r\n\r\n.last")
        r = self.raw()
        r.login()
        self.assertEqual(r.cmd("RETR 1"), b"+OK %d octets\r\n" % len(m))
        lines = r.multi()
        wire = b"".join(lines)
        self.assertIn(b"\r\n..one\r\n...two\r\n..\r\nmid . dle\r\n.. \r\n", b"\r\n" + wire)
        self.assertEqual(unstuff(lines), m)
        self.assertTrue(r.cmd("TOP 1 1").startswith(b"+OK"))
        self.assertEqual(r.multi()[-1], b"..one\r\n")
        # the terminator starts a line of its own
        self.assertTrue(r.cmd("RETR 2").startswith(b"+OK"))
        self.assertEqual(r.multi()[-1], b"..last\r\n")
        r.expect_ok("QUIT")

    def test_dele_quit_removes(self):
        names = [drop(self.daemon, message("d%d" % i)) for i in range(3)]
        p = self.login(self.pop())
        p.stat()     # a maildir view: files are now in cur/
        p.dele(1)
        p.dele(3)
        with self.assertRaises(poplib.error_proto):
            p.dele(1)       # already deleted
        with self.assertRaises(poplib.error_proto):
            p.retr(3)
        self.assertEqual(p.stat(), (1, len(message("d1"))))
        resp, lines, _ = p.list()
        self.assertEqual(lines, [b"2 %d" % len(message("d1"))])
        resp, lines, _ = p.uidl()
        self.assertEqual([l.split()[0] for l in lines], [b"2"])
        # not yet: deletions happen in UPDATE only
        self.assertEqual(len(self.daemon.maildir_files()), 3)
        mark = self.daemon.log_mark()
        self.assertTrue(p.quit().startswith(b"+OK"))
        left = self.daemon.maildir_files()
        self.assertEqual(len(left), 1)
        self.assertTrue(left[0][1].startswith(names[1].split(",")[0]), left)
        self.daemon.wait_log(r"pop3: logout: mailbox=catch, client=127\.0\.0\.1, "
                             r"retrieved=0, deleted=2, kept=1", since=mark)
        self.daemon.wait_log(r"pop3: dele: mailbox=catch, uid=\d+", since=mark)

    def test_dele_then_drop_keeps_everything(self):
        for i in range(3):
            drop(self.daemon, message("k%d" % i))
        mark = self.daemon.log_mark()
        r = self.raw()
        r.login()
        for i in (1, 2, 3):
            r.expect_ok("DELE %d" % i)
        r.close()       # no QUIT: nothing may be deleted
        self.daemon.wait_log(r"pop3: logout without QUIT: mailbox=catch, .*deleted=0, "
                             r"kept=3, marked=3", since=mark)
        self.assertEqual(len(self.daemon.maildir_files()), 3)
        # and the lock is gone
        p = self.login(self.pop())
        self.assertEqual(p.stat()[0], 3)
        p.quit()

    def test_rset(self):
        for i in range(2):
            drop(self.daemon, message("r%d" % i))
        p = self.login(self.pop())
        p.dele(1)
        p.dele(2)
        self.assertEqual(p.stat()[0], 0)
        self.assertTrue(p.rset().startswith(b"+OK"))
        self.assertEqual(p.stat()[0], 2)
        p.retr(1)
        p.noop()
        p.quit()
        self.assertEqual(len(self.daemon.maildir_files()), 2)

    def test_in_use(self):
        drop(self.daemon, message("lock"))
        p1 = self.login(self.pop())
        p2 = self.pop()
        p2.user(self.daemon.mailbox_user)
        with self.assertRaises(poplib.error_proto) as cm:
            p2.pass_(self.daemon.mailbox_password)
        self.assertTrue(str(cm.exception).startswith("b'-ERR [IN-USE]"), cm.exception)
        # still in AUTHORIZATION: a retry after the first session quits works
        with self.assertRaises(poplib.error_proto):
            p2.stat()
        p1.dele(1)
        p1.quit()
        p2.user(self.daemon.mailbox_user)
        p2.pass_(self.daemon.mailbox_password)
        self.assertEqual(p2.stat()[0], 0)
        p2.quit()

    def test_wrong_password_delayed(self):
        p = self.pop()
        p.user(self.daemon.mailbox_user)
        t0 = time.monotonic()
        with self.assertRaises(poplib.error_proto) as cm:
            p.pass_("wrong")
        elapsed = time.monotonic() - t0
        self.assertEqual(cm.exception.args[0], b"-ERR [AUTH] Authentication failed.")
        self.assertGreater(elapsed, 0.4)
        # unknown mailbox: the same answer
        p.user("nosuchbox")
        with self.assertRaises(poplib.error_proto) as cm:
            p.pass_("secret")
        self.assertTrue(cm.exception.args[0].startswith(b"-ERR [AUTH]"))
        # the session goes on, and a right password works
        self.login(p)
        p.quit()

    def test_pipelined_command_waits_for_login_delay(self):
        r = self.raw()
        t0 = time.monotonic()
        r.send(b"USER catch\r\nPASS wrong\r\nNOOP\r\nUSER catch\r\nPASS secret\r\nSTAT\r\n")
        self.assertEqual(r.line(), b"+OK\r\n")
        self.assertEqual(r.line(), b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertGreater(time.monotonic() - t0, 0.4)
        self.assertEqual(r.line(), b"+OK\r\n")          # NOOP
        self.assertEqual(r.line(), b"+OK\r\n")          # USER
        self.assertTrue(r.line().startswith(b"+OK"))    # PASS
        self.assertEqual(r.line(), b"+OK 0 0\r\n")
        r.expect_ok("QUIT")

    def test_auth_plain(self):
        import base64
        good = base64.b64encode(b"\0catch\0secret").decode()
        r = self.raw()
        # continuation form; "*" cancels
        self.assertEqual(r.cmd("AUTH PLAIN"), b"+ \r\n")
        self.assertTrue(r.cmd("*").startswith(b"-ERR"))
        self.assertEqual(r.cmd("AUTH PLAIN"), b"+ \r\n")
        self.assertTrue(r.cmd("!!notbase64").startswith(b"-ERR"))
        self.assertTrue(r.cmd("AUTH CRAM-MD5").startswith(b"-ERR"))
        self.assertEqual(r.cmd("AUTH PLAIN"), b"+ \r\n")
        self.assertEqual(r.cmd(good), b"+OK Logged in.\r\n")
        self.assertEqual(r.cmd("STAT"), b"+OK 0 0\r\n")
        r.expect_ok("QUIT")
        # initial response, with authzid = authcid
        r = self.raw()
        ir = base64.b64encode(b"catch\0catch\0secret").decode()
        self.assertEqual(r.cmd("AUTH PLAIN " + ir), b"+OK Logged in.\r\n")
        r.expect_ok("QUIT")
        # a wrong password: [AUTH] after the delay
        r = self.raw()
        bad = base64.b64encode(b"\0catch\0nope").decode()
        t0 = time.monotonic()
        self.assertEqual(r.cmd("AUTH PLAIN " + bad), b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertGreater(time.monotonic() - t0, 0.4)
        # another authzid is refused
        other = base64.b64encode(b"root\0catch\0secret").decode()
        self.assertTrue(r.cmd("AUTH PLAIN " + other).startswith(b"-ERR"))

    def test_unknown_and_state_errors(self):
        r = self.raw()
        for c in ("LAST", "UTF8", "APOP catch 0123456789abcdef0123456789abcdef", "XYZZY", ""):
            self.assertTrue(r.cmd(c).startswith(b"-ERR"), c)
        for c in ("STAT", "LIST", "RETR 1", "DELE 1", "RSET", "UIDL", "TOP 1 0"):
            self.assertEqual(r.cmd(c), b"-ERR Not logged in.\r\n", c)
        self.assertTrue(r.cmd("PASS secret").startswith(b"-ERR"))   # no USER yet
        r.expect_ok("NOOP")
        r.login()
        for c in ("LAST", "UTF8"):
            self.assertTrue(r.cmd(c).startswith(b"-ERR"), c)
        for c in ("USER catch", "PASS secret", "AUTH PLAIN", "STLS"):
            self.assertTrue(r.cmd(c).startswith(b"-ERR"), c)
        self.assertEqual(r.cmd("stat"), b"+OK 0 0\r\n")   # case-insensitive
        self.assertEqual(r.cmd("QUIT"), b"+OK Logging out.\r\n")

    def test_line_too_long(self):
        r = self.raw()
        self.assertEqual(r.cmd("NOOP " + "x" * 600), b"-ERR Line too long.\r\n")
        r.expect_ok("NOOP")
        # AUTH PLAIN's initial response counts too, and so does the
        # continuation line, which ends the exchange
        self.assertEqual(r.cmd("AUTH PLAIN " + "QUFB" * 200), b"-ERR Line too long.\r\n")
        self.assertEqual(r.cmd("AUTH PLAIN"), b"+ \r\n")
        self.assertEqual(r.cmd("QUFB" * 200), b"-ERR Line too long.\r\n")
        r.expect_ok("NOOP")
        # a long line in pieces, then a command in the same write
        r.send(b"USER " + b"y" * 4000)
        time.sleep(0.2)
        r.send(b"y" * 4000 + b"\r\nNOOP\r\n")
        self.assertEqual(r.line(), b"-ERR Line too long.\r\n")
        self.assertEqual(r.line(), b"+OK\r\n")
        r.quiet(0.3)
        r.expect_ok("QUIT")

    def test_pipelining_large_messages(self):
        sizes = [1 << 20, 3000, (1 << 20) + 17, 10, 600000]
        msgs = [message("big%d" % i, body=big_body(s, "m%d" % i)) for i, s in enumerate(sizes)]
        for m in msgs:
            drop(self.daemon, m)
        r = self.raw()
        r.login()
        burst = b"STAT\r\n"
        for i in range(len(msgs)):
            burst += b"RETR %d\r\nDELE %d\r\n" % (i + 1, i + 1)
        burst += b"TOP 5 3\r\nLIST\r\nQUIT\r\n"
        mark = self.daemon.log_mark()
        r.send(burst)
        self.assertEqual(r.line(), b"+OK %d %d\r\n" % (len(msgs), sum(map(len, msgs))))
        for i, m in enumerate(msgs):
            self.assertEqual(r.line(), b"+OK %d octets\r\n" % len(m))
            got = unstuff(r.multi())
            if got != m:
                self.fail("message %d differs (%d vs %d bytes)" % (i + 1, len(got), len(m)))
            self.assertEqual(r.line(), b"+OK Marked to be deleted.\r\n")
        self.assertEqual(r.line(), b"-ERR Message is deleted.\r\n")      # TOP 5 3
        self.assertEqual(r.line(), b"+OK 0 messages (0 octets)\r\n")
        self.assertEqual(r.multi(), [])
        self.assertEqual(r.line(), b"+OK Logging out.\r\n")
        self.assertEqual(self.daemon.maildir_files(), [])
        log = self.daemon.wait_log(r"pop3: logout: .*", since=mark).group(0)
        self.assertIn("retrieved=5, deleted=5, kept=0", log)
        self.assertEqual(len(re.findall(r"pop3: retr: mailbox=catch, uid=\d+, size=\d+",
                                        self.daemon.log(mark))), 5)

    def test_slow_reader_gets_everything(self):
        # the server must stop and resume as the output drains
        m = message("slow", body=big_body(3 << 20, "slow"))
        drop(self.daemon, m)
        r = self.raw()
        r.login()
        r.send(b"RETR 1\r\nNOOP\r\nRETR 1\r\nQUIT\r\n")
        # let the socket buffers fill: the server must wait, then resume
        time.sleep(1.0)
        self.assertEqual(r.line(), b"+OK %d octets\r\n" % len(m))
        self.assertEqual(unstuff(r.multi()), m)
        self.assertEqual(r.line(), b"+OK\r\n")
        self.assertEqual(r.line(), b"+OK %d octets\r\n" % len(m))
        self.assertEqual(unstuff(r.multi()), m)
        self.assertEqual(r.line(), b"+OK Logging out.\r\n")

    def test_uidl_stable_across_restart(self):
        for i in range(4):
            drop(self.daemon, message("s%d" % i))
        p = self.login(self.pop())
        _, before, _ = p.uidl()
        p.dele(2)
        p.quit()
        self.daemon.restart()
        drop(self.daemon, message("s-new"))
        p = self.login(self.pop())
        _, after, _ = p.uidl()
        p.quit()
        before_ids = [l.split()[1] for l in before]
        after_ids = [l.split()[1] for l in after]
        self.assertEqual(after_ids[:3], [before_ids[0], before_ids[2], before_ids[3]])
        self.assertEqual(len(after_ids), 4)
        self.assertNotIn(after_ids[3], before_ids)
        self.assertGreater(after_ids[3], before_ids[3])

    def test_log_lines(self):
        drop(self.daemon, message("log"))
        mark = self.daemon.log_mark()
        p = self.login(self.pop())
        p.retr(1)
        p.top(1, 0)
        p.dele(1)
        p.quit()
        self.daemon.wait_log(r"pop3: login: mailbox=catch, client=127\.0\.0\.1, tls=no, "
                             r"method=USER",
                             since=mark)
        self.daemon.wait_log(r"pop3: retr: mailbox=catch, uid=\d+, size=\d+, "
                             r"client=127\.0\.0\.1", since=mark)
        self.daemon.wait_log(r"pop3: logout: mailbox=catch, client=127\.0\.0\.1, "
                             r"retrieved=1, deleted=1, kept=0", since=mark)


# --- STLS --------------------------------------------------------------------------

class TestPop3StartTLS(Pop3Case):
    DAEMON_ARGS = dict(pop3_tls="starttls", imap_tls=None)

    def test_capa_before_and_after_stls(self):
        p = self.pop()
        capa = self.capa(p)
        self.assertIn("STLS", capa)
        self.assertNotIn("USER", capa)
        self.assertFalse(any(c.startswith("SASL") for c in capa), capa)
        p.stls(tls_context(self.daemon))
        capa = self.capa(p)
        self.assertNotIn("STLS", capa)
        self.assertIn("USER", capa)
        self.assertIn("SASL PLAIN", capa)

    def test_login_refused_before_stls(self):
        import base64
        r = self.raw()
        self.assertTrue(r.cmd("USER catch").startswith(b"-ERR [AUTH]"))
        self.assertTrue(r.cmd("PASS secret").startswith(b"-ERR"))
        ir = base64.b64encode(b"\0catch\0secret").decode()
        self.assertTrue(r.cmd("AUTH PLAIN " + ir).startswith(b"-ERR"))
        self.assertEqual(r.cmd("STAT"), b"-ERR Not logged in.\r\n")

    def test_stls_then_login(self):
        drop(self.daemon, message("tls"))
        mark = self.daemon.log_mark()
        p = self.pop()
        self.assertTrue(p.stls(tls_context(self.daemon)).startswith(b"+OK"))
        self.login(p)
        self.assertEqual(p.stat()[0], 1)
        with self.assertRaises(poplib.error_proto):
            p._shortcmd("STLS")
        p.quit()
        self.daemon.wait_log(r"pop3: login: mailbox=catch, client=127\.0\.0\.1, tls=yes",
                             since=mark)

    def test_pipelined_after_stls_discarded(self):
        r = self.raw()
        r.send(b"STLS\r\nNOOP\r\n")
        self.assertEqual(r.line(), b"+OK Begin TLS negotiation\r\n")
        self.assertEqual(r.buf, b"")
        r.starttls(tls_context(self.daemon))
        # the plaintext NOOP must not be answered inside TLS
        r.quiet(0.7)
        r.expect_ok("NOOP")
        r.quiet(0.3)
        r.login()
        r.expect_ok("QUIT")


# --- implicit TLS -------------------------------------------------------------------

class TestPop3Implicit(Pop3Case):
    DAEMON_ARGS = dict(pop3_tls="implicit", imap_tls=None)

    def test_login_over_tls(self):
        drop(self.daemon, message("implicit"))
        p = self.pop_ssl()
        capa = self.capa(p)
        self.assertNotIn("STLS", capa)
        self.assertIn("USER", capa)
        self.login(p)
        _, lines, _ = p.retr(1)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", message("implicit"))
        p.quit()


# --- real pullers ------------------------------------------------------------------

RECIPIENTS = ("alice", "bob", "carol")


def deliver_set(daemon):
    """Messages to the catch-all domain over SMTP; returns {local part:
    set of subjects} as multidrop should sort them."""
    want = {r: set() for r in RECIPIENTS}
    plan = [("one", ["alice"]), ("two", ["bob", "carol"]), ("three", RECIPIENTS),
            ("dots", ["carol"]), ("big", ["alice", "bob"])]
    for subject, rcpts in plan:
        body = b"Hello.\r\n"
        if subject == "dots":
            body = b".leading dot\r\n..two\r\n.\r\nend\r\n"
        if subject == "big":
            body = big_body(300000, "big")
        daemon.deliver(["%s@catch.test" % r for r in rcpts],
                       body=harness.make_message(subject=subject, body=body))
        for r in rcpts:
            want[r].add(subject)
    return want, plan


MDA_SCRIPT = """#!/bin/sh
# $1: the local recipient (fetchmail's %T); one file per message
set -e
r=$(printf '%s' "$1" | sed 's/@.*//')
mkdir -p "{out}/$r"
cat > "{out}/$r/$(date +%s%N).$$"
"""


def write_exec(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


def subjects_in(directory):
    """{subdir: [subjects]} of the message files below DIRECTORY."""
    out = {}
    for sub in sorted(os.listdir(directory)):
        files = []
        for root, _, names in os.walk(os.path.join(directory, sub)):
            files.extend(os.path.join(root, n) for n in names)
        subs = []
        for f in files:
            with open(f, "rb") as fh:
                data = fh.read()
            m = re.search(rb"^Subject: (\S+)", data, re.M)
            subs.append(m.group(1).decode() if m else "?")
            xo = re.search(rb"^X-Original-To: (\S+)", data, re.M)
            if xo and not xo.group(1).decode().startswith(sub + "@"):
                raise AssertionError("%s holds a copy for %s" % (f, xo.group(1)))
        out[sub] = subs
    return out


class PullerMixin:
    """Runs fetchmail / getmail / mpop against the class daemon."""

    def check_multidrop(self, out, want):
        got = subjects_in(out)
        self.assertEqual(sorted(got), sorted(r for r in want if want[r]))
        for r, subjects in want.items():
            # every message once, at the right recipient
            self.assertEqual(sorted(got.get(r, [])), sorted(subjects), r)
        self.assertEqual(self.daemon.maildir_files(), [])

    def run_fetchmail(self, tls_line):
        if shutil.which("fetchmail") is None:
            self.skipTest("fetchmail is not installed")
        want, _ = deliver_set(self.daemon)
        work = self.tmpdir()
        out = os.path.join(work, "out")
        os.mkdir(out)
        mda = os.path.join(work, "mda.sh")
        write_exec(mda, MDA_SCRIPT.replace("{out}", out))
        rc = os.path.join(work, "fetchmailrc")
        with open(rc, "w") as f:
            f.write('set no syslog\n'
                    'poll localhost protocol pop3 port %d\n'
                    '    envelope "X-Original-To" localdomains catch.test no dns\n'
                    '    user "%s" password "%s" to * here\n'
                    '    %s sslcertck sslcertfile "%s"\n'
                    '    mda "%s %%T"\n'
                    % (self.daemon.pop3_port, self.daemon.mailbox_user,
                       self.daemon.mailbox_password, tls_line, self.daemon.ca_file, mda))
        os.chmod(rc, 0o600)
        env = dict(os.environ, FETCHMAILHOME=work, HOME=work, LC_ALL="C")
        cp = subprocess.run(["fetchmail", "-f", rc, "--nosyslog", "--nodetach", "-d0",
                             "--pidfile", os.path.join(work, "fetchmail.pid"), "-v"],
                            env=env, cwd=work, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=120)
        log = cp.stdout.decode("utf-8", "replace")
        self.assertEqual(cp.returncode, 0, "fetchmail exit %d:\n%s" % (cp.returncode, log[-6000:]))
        self.check_multidrop(out, want)
        return log

    def run_getmail(self):
        if shutil.which("getmail") is None:
            self.skipTest("getmail6 is not installed")
        want, plan = deliver_set(self.daemon)
        ncopies = sum(len(r) for _, r in plan)
        work = self.tmpdir()
        md = os.path.join(work, "Maildir")
        # getmail refuses to deliver as root: it switches to "nobody"
        # (destination user), who must own the Maildir.
        import pwd
        nobody = pwd.getpwnam("nobody")
        for sub in ("", "tmp", "new", "cur"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
            os.chown(os.path.join(md, sub), nobody.pw_uid, nobody.pw_gid)
        os.chmod(work, 0o755)
        with open(os.path.join(work, "getmailrc"), "w") as f:
            f.write("[retriever]\ntype = SimplePOP3SSLRetriever\nserver = localhost\n"
                    "port = %d\nusername = %s\npassword = %s\nca_certs = %s\n\n"
                    "[destination]\ntype = Maildir\npath = %s/\nuser = nobody\n\n"
                    "[options]\ndelete = true\nread_all = true\nverbose = 2\n"
                    % (self.daemon.pop3_port, self.daemon.mailbox_user,
                       self.daemon.mailbox_password, self.daemon.ca_file, md))
        cp = subprocess.run(["getmail", "--getmaildir", work, "--rcfile", "getmailrc"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                            env=dict(os.environ, HOME=work))
        log = cp.stdout.decode("utf-8", "replace")
        self.assertEqual(cp.returncode, 0, "getmail exit %d:\n%s" % (cp.returncode, log[-6000:]))
        got = os.listdir(os.path.join(md, "new"))
        self.assertEqual(len(got), ncopies, log[-3000:])
        seen = {}
        for n in got:
            with open(os.path.join(md, "new", n), "rb") as fh:
                data = fh.read()
            to = re.search(rb"^X-Original-To: (\S+)", data, re.M).group(1).decode()
            subj = re.search(rb"^Subject: (\S+)", data, re.M).group(1).decode()
            seen.setdefault(to.split("@")[0], []).append(subj)
        self.assertEqual({r: sorted(s) for r, s in seen.items()},
                         {r: sorted(s) for r, s in want.items() if s})
        self.assertEqual(self.daemon.maildir_files(), [])

    def run_mpop(self, starttls, auth="user"):
        if shutil.which("mpop") is None:
            self.skipTest("mpop is not installed")
        want, plan = deliver_set(self.daemon)
        ncopies = sum(len(r) for _, r in plan)
        work = self.tmpdir()
        md = make_maildir(os.path.join(work, "Maildir"))
        conf = os.path.join(work, "mpoprc")
        with open(conf, "w") as f:
            f.write("defaults\n"
                    "account catch\nhost localhost\nport %d\nuser %s\npassword %s\n"
                    "auth %s\ntls on\ntls_starttls %s\ntls_trust_file %s\n"
                    "pipelining on\nkeep off\nuidls_file %s/uidls\n"
                    "delivery maildir %s\n"
                    % (self.daemon.pop3_port, self.daemon.mailbox_user,
                       self.daemon.mailbox_password, auth, "on" if starttls else "off",
                       self.daemon.ca_file, work, md))
        os.chmod(conf, 0o600)
        mark = self.daemon.log_mark()
        cp = subprocess.run(["mpop", "-C", conf, "-d", "catch"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=120,
                            env=dict(os.environ, HOME=work))
        log = cp.stdout.decode("utf-8", "replace")
        self.assertEqual(cp.returncode, 0, "mpop exit %d:\n%s" % (cp.returncode, log[-6000:]))
        # mpop -d shows the dialogue: RETR 2 went out before the answer
        # to RETR 1 came back (pipelined), and so did DELE 2 before DELE 1's
        dialogue = [l for l in log.splitlines() if l.startswith(("-->", "<--"))]
        first = next(i for i, l in enumerate(dialogue) if re.match(r"<-- \+OK \d+ octets", l))
        self.assertIn("--> RETR 2", dialogue[:first])
        first = dialogue.index("<-- +OK Marked to be deleted.")
        self.assertIn("--> DELE 2", dialogue[:first])
        self.assertEqual(len(os.listdir(os.path.join(md, "new"))), ncopies)
        self.assertEqual(self.daemon.maildir_files(), [])
        self.daemon.wait_log(r"pop3: logout: mailbox=catch, .*deleted=%d, kept=0" % ncopies,
                             since=mark)
        return want


class TestPop3PullersStartTLS(Pop3Case, PullerMixin):
    DAEMON_ARGS = dict(pop3_tls="starttls", imap_tls=None,
                       limits=dict(message_size="10M"))

    def test_fetchmail_stls_multidrop(self):
        mark = self.daemon.log_mark()
        self.run_fetchmail('sslproto "auto"')
        self.daemon.wait_log(r"pop3: login: mailbox=catch, client=127\.0\.0\.1, tls=yes",
                             since=mark)

    def test_mpop_stls_pipelining_auth_plain(self):
        mark = self.daemon.log_mark()
        self.run_mpop(starttls=True, auth="plain")
        self.daemon.wait_log(r"pop3: login: mailbox=catch, client=127\.0\.0\.1, tls=yes, "
                             r"method=PLAIN",
                             since=mark)


class TestPop3PullersImplicit(Pop3Case, PullerMixin):
    DAEMON_ARGS = dict(pop3_tls="implicit", imap_tls=None,
                       limits=dict(message_size="10M"))

    def test_fetchmail_ssl_multidrop(self):
        self.run_fetchmail("ssl")

    def test_getmail_ssl_delete(self):
        self.run_getmail()

    def test_mpop_implicit_pipelining(self):
        self.run_mpop(starttls=False)


if __name__ == "__main__":
    unittest.main()
