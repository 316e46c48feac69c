"""Our POP3/IMAP server and Dovecot 2.3 on the same Maildir: mail that
came in over SMTP has the same UIDs, UIDVALIDITY and POP3 UIDLs in both,
the same bytes, and what one side expunges the other no longer lists, so
an operator can switch servers and the pullers download nothing twice.
(The Maildir code alone against Dovecot: test_dovecot_compat.)"""

import imaplib
import poplib
import re
import unittest

import dovecot
from catchall_util import CatchallDaemon
from harness import make_message

USER = "catch"


def pop3_uidls(port, password):
    pop = poplib.POP3("127.0.0.1", port, timeout=30)
    try:
        pop.user(USER)
        pop.pass_(password)
        _, lines, _ = pop.uidl()
        out = [l.decode().split()[1] for l in lines]
        body = b"\r\n".join(pop.retr(1)[1]) if out else b""
    finally:
        pop.quit()
    return out, body


def imap_view(port, password):
    """(uidvalidity, [(uid, size)], BODY[] of the first message)"""
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        m.login(USER, password)
        m.select("INBOX")
        validity = int(m.response("UIDVALIDITY")[1][0])
        typ, data = m.uid("FETCH", "1:*", "(UID RFC822.SIZE)")
        assert typ == "OK", data
        rows = sorted((int(re.search(rb"UID (\d+)", d).group(1)),
                       int(re.search(rb"RFC822\.SIZE (\d+)", d).group(1)))
                      for d in data if d)
        typ, data = m.fetch("1", "(BODY.PEEK[])")
        first = data[0][1] if typ == "OK" and data and isinstance(data[0], tuple) else b""
    finally:
        m.logout()
    return validity, rows, first


class SameMaildir(unittest.TestCase):
    TIMEOUT = 180

    def setUp(self):
        why = dovecot.available()
        if why:
            self.skipTest(why)
        self.dv = dovecot.Dovecot({USER: "dv-Pa55"})
        self.addCleanup(self.dv.stop)
        self.d = CatchallDaemon(pop3_tls="none", imap_tls="none",
                                maildir=self.dv.maildir(USER))
        self.addCleanup(self.d.cleanup)
        self.d.start()

    def deliver(self, n, start=0):
        for i in range(start, start + n):
            self.d.deliver(["user%d@catch.test" % i],
                           body=make_message(subject="same %d" % i,
                                             body=b"body %d\r\n.dot\r\n" % i))

    def both(self):
        ours = (pop3_uidls(self.d.pop3_port, self.d.mailbox_password),
                imap_view(self.d.imap_port, self.d.mailbox_password))
        theirs = (pop3_uidls(self.dv.pop3, "dv-Pa55"), imap_view(self.dv.imap, "dv-Pa55"))
        return ours, theirs

    def assert_same(self, n):
        ours, theirs = self.both()
        (our_uidl, our_body), (our_v, our_rows, our_first) = ours
        (dv_uidl, dv_body), (dv_v, dv_rows, dv_first) = theirs
        self.assertEqual(len(our_uidl), n)
        self.assertEqual(our_uidl, dv_uidl, "POP3 UIDLs differ")
        self.assertEqual((our_v, our_rows), (dv_v, dv_rows), "UIDs or sizes differ")
        self.assertEqual(our_body, dv_body, "RETR 1 differs")
        self.assertEqual(our_first, dv_first, "BODY[] of message 1 differs")
        for u, (uid, _) in zip(our_uidl, our_rows):
            self.assertEqual(u, "%08x%08x" % (uid, our_v))

    def test_switch_servers_back_and_forth(self):
        self.deliver(3)
        self.d.stop()              # we numbered them, now Dovecot serves ...
        self.dv.start()
        self.d.start()             # ... and both at once
        self.assert_same(3)
        self.deliver(2, 3)         # new mail: Dovecot sees it first this time
        imap_view(self.dv.imap, "dv-Pa55")
        self.assert_same(5)
        # Dovecot expunges one; our view drops it and keeps the others' UIDLs
        m = imaplib.IMAP4("127.0.0.1", self.dv.imap, timeout=30)
        m.login(USER, "dv-Pa55")
        m.select("INBOX")
        m.store("2", "+FLAGS", "(\\Deleted)")
        m.expunge()
        m.logout()
        self.assert_same(4)
