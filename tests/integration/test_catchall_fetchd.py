"""The product end to end: mail for a catch-all domain comes in over SMTP,
sits in backupmx's Maildir, and fetchd on the "primary" pulls it over IMAP
and POP3 with TLS (certificate checked against the test CA), hands each
copy to the right local recipient and empties the mailbox."""

import os
import shutil
import subprocess
import tempfile
import unittest

import harness
from catchall_util import CatchallDaemon
from harness import make_message


def fetchd_path():
    return os.path.join(harness.BIN, "fetchd")


class CatchallToFetchd(unittest.TestCase):
    TIMEOUT = 120

    def setUp(self):
        self.d = CatchallDaemon(pop3_tls="implicit", imap_tls="starttls")
        self.addCleanup(self.d.cleanup)
        self.d.start()
        self.dir = tempfile.mkdtemp(prefix="bmx-e2e-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.out = os.path.join(self.dir, "out")
        os.mkdir(self.out)

    def config(self, protocol, tls, port):
        deliver = ("mda:/bin/sh -c 'f=$(mktemp %s/tmp.XXXXXXXX) && cat > \"$f\" && "
                   "mv \"$f\" \"%s/msg.$(basename $f).$1\"' mda %%T" % (self.out, self.out))
        text = "\n".join([
            'state = "%s/state"' % self.dir,
            'account "catch" {',
            '  server = "localhost"', '  protocol = "%s"' % protocol,
            '  port = %d' % port, '  tls = "%s"' % tls,
            '  ca = "%s"' % self.d.ca_file,
            '  user = "%s"' % self.d.mailbox_user,
            '  password = "%s"' % self.d.mailbox_password,
            '  deliver = "%s"' % deliver.replace('"', '\\"'),
            '  localdomains = { "catch.test" }', "}", ""])
        path = os.path.join(self.dir, "fetchd.conf")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        return path

    def drain(self, protocol, tls, port):
        conf = self.config(protocol, tls, port)
        cp = subprocess.run([fetchd_path(), "-1", "-f", conf], capture_output=True,
                            timeout=60)
        err = cp.stderr.decode("utf-8", "replace")
        self.assertEqual(cp.returncode, 0, err[-3000:] + self.d.log_tail(20))
        self.assertNotRegex(err, harness.SANITIZER_RE)

    def by_recipient(self):
        got = {}
        for n in os.listdir(self.out):
            if not n.startswith("msg."):
                continue
            rcpt = n.split(".", 2)[2]          # msg.tmp.XXXXXXXX.<rcpt>
            rcpt = rcpt.split(".", 1)[1]
            with open(os.path.join(self.out, n), "rb") as f:
                got.setdefault(rcpt, []).append(f.read())
        return got

    def run_flow(self, protocol, tls, port):
        rcpts = ["alice@catch.test", "bob@catch.test", "carol@catch.test"]
        self.d.deliver(rcpts, sender="sender@example.net",
                       body=make_message(subject="to three", body=b"hello all\r\n"))
        self.d.deliver(["bob@catch.test"], body=make_message(subject="bob only"))
        # a forged envelope header must not misroute
        self.d.deliver(["carol@catch.test"],
                       body=b"X-Original-To: alice@catch.test\r\nSubject: forged\r\n\r\nx\r\n")
        self.drain(protocol, tls, port)
        got = self.by_recipient()
        self.assertEqual(sorted(got), rcpts, got.keys())
        self.assertEqual(len(got["alice@catch.test"]), 1)
        self.assertEqual(len(got["bob@catch.test"]), 2)
        self.assertEqual(len(got["carol@catch.test"]), 2)
        self.assertTrue(any(b"Subject: forged" in m for m in got["carol@catch.test"]))
        self.assertFalse(any(b"Subject: forged" in m for m in got["alice@catch.test"]))
        self.assertEqual(self.d.maildir_files(), [], "the mailbox is empty afterwards")
        # a second run finds nothing and delivers nothing twice
        self.drain(protocol, tls, port)
        self.assertEqual(sum(len(v) for v in self.by_recipient().values()), 5)

    def test_imap_starttls(self):
        self.run_flow("imap", "starttls", self.d.imap_port)

    def test_pop3_implicit_tls(self):
        self.run_flow("pop3", "implicit", self.d.pop3_port)
