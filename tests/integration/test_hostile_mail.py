"""Hostile POP3/IMAP clients (issue 9, item 4): password guessing is
slowed and then refused for the guessing address only (a normal client
from another address keeps being served, its latency printed); literals
of 4 GB and more announced; commands before login; path tricks in login
and mailbox names. The daemon stays up throughout."""

import concurrent.futures
import imaplib
import poplib
import socket
import statistics
import time

from catchall_util import CatchallTestCase
from harness import make_message


def pop3_login(port, user, password, source="127.0.0.1"):
    """(reply to PASS, seconds it took)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30,
                                 source_address=(source, 0))
    f = s.makefile("rwb")
    try:
        f.readline()
        f.write(b"USER %s\r\n" % user.encode())
        f.flush()
        f.readline()
        t0 = time.monotonic()
        f.write(b"PASS %s\r\n" % password.encode())
        f.flush()
        line = f.readline()
        return line, time.monotonic() - t0
    finally:
        s.close()


class Guessing(CatchallTestCase):
    DAEMON_ARGS = dict(pop3_tls="none", imap_tls="none",
                       limits=dict(connections_per_ip=50))

    def normal_session(self):
        """A whole POP3 session from another address; seconds."""
        t0 = time.monotonic()
        s = socket.create_connection(("127.0.0.1", self.daemon.pop3_port), timeout=30,
                                     source_address=("127.0.0.3", 0))
        p = poplib.POP3.__new__(poplib.POP3)
        p.host, p.port, p.sock = "127.0.0.1", self.daemon.pop3_port, s
        p.file = s.makefile("rb")
        p._debugging = 0
        p.welcome = p._getresp()
        p.user(self.daemon.mailbox_user)
        p.pass_(self.daemon.mailbox_password)
        p.stat()
        p.quit()
        return time.monotonic() - t0

    def test_guessing_slowed_then_refused_others_served(self):
        port = self.daemon.pop3_port
        latencies = []
        with concurrent.futures.ThreadPoolExecutor(10) as ex:
            guesses = [ex.submit(pop3_login, port, "catch", "guess%d" % i) for i in range(10)]
            while not all(g.done() for g in guesses):
                latencies.append(self.normal_session())
                time.sleep(0.05)
            results = [g.result() for g in guesses]
        for line, took in results:
            self.assertTrue(line.startswith(b"-ERR [AUTH]"), line)
            self.assertGreaterEqual(took, 0.4, "a failed login answered without delay")
        # the guesser is now refused, even with the right password, over
        # both protocols; it is told to wait, not that the password is wrong
        line, _ = pop3_login(port, "catch", self.daemon.mailbox_password)
        self.assertTrue(line.startswith(b"-ERR [SYS/TEMP]"), line)
        m = imaplib.IMAP4("127.0.0.1", self.daemon.imap_port, timeout=30)
        with self.assertRaises(imaplib.IMAP4.error):
            m.login("catch", self.daemon.mailbox_password)
        m.shutdown()
        # another address logs in as usual
        self.normal_session()
        self.assertIn("login refused: client=127.0.0.1, too many failures", self.daemon.log())
        print("# POP3 session from another address during 10 parallel guesses: "
              "%d sessions, median %.0f ms, max %.0f ms"
              % (len(latencies), statistics.median(latencies) * 1000,
                 max(latencies) * 1000))


class Abuse(CatchallTestCase):
    DAEMON_ARGS = dict(pop3_tls="none", imap_tls="none")

    def imap_raw(self):
        s = socket.create_connection(("127.0.0.1", self.daemon.imap_port), timeout=10)
        self.addCleanup(s.close)
        f = s.makefile("rwb")
        self.assertTrue(f.readline().startswith(b"* OK"))
        return f

    def tagged(self, f, tag, line):
        f.write(tag + b" " + line + b"\r\n")
        f.flush()
        while True:
            r = f.readline()
            self.assertTrue(r, "connection closed after %r" % line)
            if r.startswith(tag + b" ") or r.startswith(b"+"):
                return r

    def test_huge_literals_refused(self):
        for n in (b"4294967296", b"4294967295", b"18446744073709551616",
                  b"99999999999999999999999999"):
            f = self.imap_raw()
            r = self.tagged(f, b"a1", b"LOGIN {" + n + b"}")
            self.assertTrue(r.startswith(b"a1 BAD"), (n, r))
            self.assertTrue(self.tagged(f, b"a2", b"NOOP").startswith(b"a2 OK"))
        self.daemon.deliver(["alive@catch.test"])

    def test_commands_before_login(self):
        f = self.imap_raw()
        for cmd in (b"SELECT INBOX", b"FETCH 1 BODY[]", b"UID SEARCH ALL", b"EXPUNGE",
                    b"STORE 1 +FLAGS (\\Deleted)", b"STATUS INBOX (MESSAGES)",
                    b"LIST \"\" *", b"IDLE"):
            r = self.tagged(f, b"t", cmd)
            self.assertTrue(r.startswith(b"t BAD") or r.startswith(b"t NO"), (cmd, r))
        s = socket.create_connection(("127.0.0.1", self.daemon.pop3_port), timeout=10)
        self.addCleanup(s.close)
        pf = s.makefile("rwb")
        pf.readline()
        for cmd in (b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"TOP 1 0", b"UIDL", b"RSET"):
            pf.write(cmd + b"\r\n")
            pf.flush()
            r = pf.readline()
            self.assertTrue(r.startswith(b"-ERR"), (cmd, r))

    def test_path_tricks(self):
        self.daemon.deliver(["p@catch.test"], body=make_message(subject="path"))
        # one source address each, so that the growing delay after a failed
        # login (tested above) does not add up
        for i, user in enumerate(("../catch", "catch/../catch", "/catch", "catch\\",
                                  "CATCH/.", "..", ".")):
            line, _ = pop3_login(self.daemon.pop3_port, user, self.daemon.mailbox_password,
                                 source="127.0.4.%d" % (i + 1))
            self.assertTrue(line.startswith(b"-ERR"), (user, line))
        m = imaplib.IMAP4("127.0.0.1", self.daemon.imap_port, timeout=10)
        m.login(self.daemon.mailbox_user, self.daemon.mailbox_password)
        for box in ("../catch", "INBOX/../..", "/etc", "../../../../etc/passwd",
                    "INBOX/cur", "~root", "INBOX.", "tmp", "new"):
            self.assertEqual(m.select('"%s"' % box)[0], "NO", box)
            self.assertEqual(m.status('"%s"' % box, "(MESSAGES)")[0], "NO", box)
        typ, data = m.list('""', '"../*"')
        self.assertEqual(typ, "OK")
        self.assertTrue(all(d is None or b"INBOX" in d for d in data), data)
        typ, data = m.list('""', '"*"')
        self.assertEqual([d for d in data if d], [b'(\\HasNoChildren) "/" INBOX'] if
                         b"HasNoChildren" in data[0] else [data[0]])
        self.assertEqual(m.select("INBOX")[0], "OK")
        m.logout()
