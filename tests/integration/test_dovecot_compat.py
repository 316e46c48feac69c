"""The catch-all Maildir code (catchall/maildir.c, mailbox.c, uidlist.c)
and a real Dovecot 2.3 on the same Maildir agree: same UIDs, the same
UIDVALIDITY and UIDNEXT, the same POP3 UIDLs, whoever assigned the UIDs
first; flags set on either side are seen on the other; expunges too.

Our side runs through build/tests/mdtool (deliver, list, flags, expunge),
as the user Dovecot's mail processes run as (nobody), so that both can
write the Maildir. Dovecot is the private instance of dovecot.py, one per
test, stopped by its PID.

Dovecot's UIDL is its default pop3_uidl_format %08Xu%08Xv, which prints
lowercase hex digits (e.g. 000000016b0b3053).
"""

import imaplib
import os
import poplib
import pwd
import re
import subprocess
import time
import unittest

import dovecot
import harness

USER = "catch"
PASSWORD = "compat-Pa55"
FLAG_LETTERS = {b"\\Draft": "D", b"\\Flagged": "F", b"\\Answered": "R",
                b"\\Seen": "S", b"\\Deleted": "T"}
DOVECOT_PROBLEM_RE = re.compile(r"(Error|Warning|Panic|Fatal):")


def mdtool_path():
    return os.path.join(harness.BUILD, "tests", "mdtool")


def base_of(name):
    return name.split(":", 1)[0]


class DovecotCompat(unittest.TestCase):
    TIMEOUT = 180

    @classmethod
    def setUpClass(cls):
        why = dovecot.available()
        if why:
            raise unittest.SkipTest(why)
        if not os.access(mdtool_path(), os.X_OK):
            raise unittest.SkipTest("%s is not built" % mdtool_path())
        nobody = pwd.getpwnam("nobody")
        cls.ids = (nobody.pw_uid, nobody.pw_gid)

    def setUp(self):
        self.dv = dovecot.Dovecot({USER: PASSWORD})
        self.addCleanup(self.dv.stop)
        self.maildir = self.dv.maildir(USER)
        self.src = os.path.join(self.dv.state, "src")
        os.mkdir(self.src, 0o755)
        self.tags = {}          # file base name -> message tag
        self.imap = None

    def tearDown(self):
        if self.imap is not None:
            try:
                self.imap.logout()
            except Exception:
                pass
        problems = [line for line in self.dv.log_tail(500).splitlines()
                    if DOVECOT_PROBLEM_RE.search(line)]
        self.assertEqual(problems, [], "Dovecot complained")

    # --- our side -------------------------------------------------------

    def md(self, *args):
        cp = harness.run_tool([mdtool_path()] + list(args), ids=self.ids)
        return cp.stdout.decode()

    def deliver(self, tag):
        """maildir_deliver of a small message whose Subject is TAG."""
        path = os.path.join(self.src, tag)
        with open(path, "w") as f:
            f.write("Return-Path: <sender@remote.test>\n"
                    "X-Original-To: %s@catch.test\n"
                    "Subject: %s\n"
                    "Message-ID: <%s@compat.test>\n\n"
                    "body of %s\n.a line with a dot\n" % (tag, tag, tag, tag))
        os.chmod(path, 0o644)
        name = self.md("deliver", self.maildir, path).strip()
        self.tags[name] = tag
        return name

    def drop_plain(self, tag):
        """A file in new/ without ,S= or ,W= (as another delivery agent
        would leave it): Dovecot stores its size as a W ext field of the
        uidlist when it computes it."""
        name = "%d.M%dP%d.plain-%s" % (int(time.time()), len(self.tags), os.getpid(), tag)
        path = os.path.join(self.maildir, "new", name)
        with open(path, "wb") as f:
            f.write(b"Subject: %s\r\n\r\nplain body of %s\r\n" % (tag.encode(), tag.encode()))
        os.chown(path, *self.ids)
        self.tags[name] = tag
        return name

    def ours(self):
        """{tag: (uid, uidvalidity, size, flag letters)} through mailbox_open."""
        out = {}
        for line in self.md("list", self.maildir).splitlines():
            uid, validity, size, flags, name = line.split(" ", 4)
            out[self.tags[base_of(name)]] = (int(uid), int(validity), int(size),
                                             "" if flags == "-" else flags)
        return out

    def our_status(self):
        line = self.md("status", self.maildir).strip()
        return {k: int(v) for k, v in (kv.split("=") for kv in line.split())}

    # --- Dovecot's side -------------------------------------------------------

    def imap_login(self):
        self.imap = imaplib.IMAP4("127.0.0.1", self.dv.imap, timeout=30)
        self.imap.login(USER, PASSWORD)
        typ, _ = self.imap.select("INBOX")
        self.assertEqual(typ, "OK")
        return (int(self.imap.response("UIDVALIDITY")[1][0]),
                int(self.imap.response("UIDNEXT")[1][0]))

    def dovecot_view(self):
        """{tag: (uid, size, flag letters)} by UID FETCH 1:* in the open
        session (NOOP first, so that Dovecot syncs with the directory)."""
        self.assertEqual(self.imap.noop()[0], "OK")
        typ, data = self.imap.uid(
            "FETCH", "1:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(typ, "OK", data)
        out = {}
        for item in data:
            if not isinstance(item, tuple):
                continue
            meta, hdr = item
            uid = int(re.search(rb"UID (\d+)", meta).group(1))
            size = int(re.search(rb"RFC822\.SIZE (\d+)", meta).group(1))
            flags = re.search(rb"FLAGS \(([^)]*)\)", meta).group(1).split()
            letters = "".join(sorted(FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS))
            tag = re.search(rb"Subject: (\S+)", hdr).group(1).decode()
            out[tag] = (uid, size, letters)
        return out

    def dovecot_uidls(self):
        pop = poplib.POP3("127.0.0.1", self.dv.pop3, timeout=30)
        try:
            pop.user(USER)
            pop.pass_(PASSWORD)
            _, lines, _ = pop.uidl()
        finally:
            pop.quit()
        return [line.split()[1].decode() for line in lines]

    # --- checks -----------------------------------------------------------------

    def assert_same_view(self, want_count):
        """Our UIDs, UIDVALIDITY, sizes and flags are Dovecot's, and its
        POP3 UIDLs are %08x%08x of our (uid, uidvalidity)."""
        dv = self.dovecot_view()
        ours = self.ours()
        self.assertEqual(len(ours), want_count, ours)
        self.assertEqual({t: v[0] for t, v in ours.items()}, {t: v[0] for t, v in dv.items()})
        self.assertEqual({t: v[2] for t, v in ours.items()}, {t: v[1] for t, v in dv.items()})
        self.assertEqual({t: v[3] for t, v in ours.items()}, {t: v[2] for t, v in dv.items()})
        validities = {v[1] for v in ours.values()}
        self.assertEqual(len(validities), 1)
        validity = validities.pop()
        uidls = ["%08x%08x" % (uid, validity) for uid in sorted(v[0] for v in ours.values())]
        self.assertEqual(self.dovecot_uidls(), uidls)
        return ours

    def wait_for_uidlist(self, regex, timeout=10):
        """Dovecot's session process writes the uidlist as it exits, after
        the client saw the end of the session."""
        deadline = time.monotonic() + timeout
        while not re.search(regex, self.uidlist()):
            if time.monotonic() > deadline:
                self.assertRegex(self.uidlist(), regex)
            time.sleep(0.05)

    def uidlist(self):
        with open(os.path.join(self.maildir, "dovecot-uidlist")) as f:
            return f.read()

    # --- tests ------------------------------------------------------------------

    def test_our_uids_are_dovecots(self):
        """We deliver and assign UIDs; Dovecot, started afterwards on the
        same Maildir, shows the same ones and serves the bytes as stored."""
        for i in range(4):
            self.deliver("ours%d" % i)
        ours = self.ours()
        self.assertEqual(sorted(v[0] for v in ours.values()), [1, 2, 3, 4])
        status = self.our_status()
        self.assertEqual(status["uidnext"], 5)

        self.dv.start()
        validity, uidnext = self.imap_login()
        self.assertEqual(validity, status["uidvalidity"])
        self.assertEqual(uidnext, 5)
        self.assert_same_view(4)

        # S= is exact: Dovecot fetches the whole file as it is on disk
        name = next(n for n in os.listdir(os.path.join(self.maildir, "cur"))
                    if self.tags.get(base_of(n)) == "ours2")
        with open(os.path.join(self.maildir, "cur", name), "rb") as f:
            stored = f.read()
        self.assertIn(b"\r\n.a line with a dot\r\n", stored)
        typ, data = self.imap.uid("FETCH", str(ours["ours2"][0]), "(BODY.PEEK[])")
        self.assertEqual(typ, "OK", data)
        self.assertEqual(data[0][1], stored)

    def test_dovecot_assigns_first(self):
        """Dovecot creates the uidlist and assigns UIDs first (also to a
        file it records a W ext field for); we read its uidlist, agree, and
        continue it; Dovecot then agrees with the UIDs we added."""
        self.deliver("d1")
        self.deliver("d2")
        self.dv.start()
        validity, uidnext = self.imap_login()
        self.assertEqual(uidnext, 3)
        # (Dovecot writes the header first and appends the lines: its N
        # lags behind them, which readers must allow for)
        self.assertRegex(self.uidlist(), r"^3 V%d N\d+ G[0-9a-f]{32}\n" % validity)
        self.assertEqual(self.our_status(),
                         {"uidvalidity": validity, "uidnext": 3, "messages": 2})
        self.assert_same_view(2)

        # new mail that Dovecot sees first
        self.deliver("d3")
        self.drop_plain("p4")
        view = self.dovecot_view()
        self.assertEqual({view["d3"][0], view["p4"][0]}, {3, 4})
        # Dovecot keeps the size it computed for the file without W= as a
        # W ext field, written at a later sync (here: the POP3 session's)
        self.imap.logout()
        self.imap = None
        self.dovecot_uidls()
        w_line = r"\n%d W\d+ :[^\n]*plain-p4\n" % view["p4"][0]
        self.wait_for_uidlist(w_line)
        self.imap_login()
        ours = self.assert_same_view(4)
        self.assertEqual(ours["p4"][0], view["p4"][0])

        # new mail that we see first: our rewrite keeps Dovecot's W field
        self.deliver("o5")
        self.assertEqual(self.ours()["o5"][0], 5)
        self.assertRegex(self.uidlist(), r"^3 V%d N6 G[0-9a-f]{32}\n" % validity)
        self.assertRegex(self.uidlist(), w_line)
        self.assert_same_view(5)

        # a fresh Dovecot session agrees too
        self.imap.logout()
        self.imap = None
        self.assertEqual(self.imap_login(), (validity, 6))
        self.assert_same_view(5)

    def test_flags_and_expunges_both_ways(self):
        for i in range(4):
            self.deliver("f%d" % i)
        ours = self.ours()
        self.dv.start()
        self.imap_login()
        self.assert_same_view(4)

        # Dovecot sets flags (it renames the file): we see them
        uid0, uid1, uid2, uid3 = (ours["f%d" % i][0] for i in range(4))
        self.assertEqual(self.imap.uid("STORE", str(uid0), "+FLAGS", r"(\Seen)")[0], "OK")
        self.assertEqual(self.imap.uid("STORE", str(uid1), "+FLAGS",
                                       r"(\Flagged \Answered \Draft)")[0], "OK")
        ours = self.ours()
        self.assertEqual(ours["f0"][3], "S")
        self.assertEqual(ours["f1"][3], "DFR")

        # we set flags (a rename too): Dovecot sees them
        self.md("flags", self.maildir, str(uid2), "FS")
        self.md("flags", self.maildir, str(uid1), "-")
        view = self.dovecot_view()
        self.assertEqual(view["f2"][2], "FS")
        self.assertEqual(view["f1"][2], "")
        self.assert_same_view(4)

        # we expunge one: Dovecot drops it
        self.md("expunge", self.maildir, str(uid3))
        view = self.dovecot_view()
        self.assertNotIn("f3", view)
        self.assertEqual(len(view), 3)

        # Dovecot expunges one: we drop it
        self.assertEqual(self.imap.uid("STORE", str(uid0), "+FLAGS", r"(\Deleted)")[0], "OK")
        self.assertEqual(self.imap.expunge()[0], "OK")
        ours = self.ours()
        self.assertEqual(sorted(ours), ["f1", "f2"])
        self.assert_same_view(2)

        # UIDs are not reused after expunges, on either side
        self.deliver("f4")
        self.assertEqual(self.ours()["f4"][0], 5)
        self.assert_same_view(3)

    def test_concurrent_assignment(self):
        """Deliveries while both sides sync at the same time: the uidlist
        lock keeps one allocator, so every message ends up with one UID
        that both sides agree on, and UIDs only grow."""
        self.deliver("c-first")
        self.dv.start()
        self.imap_login()
        seen = {}
        for round_ in range(12):
            for i in range(3):
                self.deliver("c%d-%d" % (round_, i))
            with harness.managed_popen([mdtool_path(), "list", self.maildir],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       preexec_fn=harness.as_ids_fn(self.ids)) as lister:
                view = self.dovecot_view()
                out, err = lister.communicate(timeout=60)
            self.assertEqual(lister.returncode, 0, err)
            self.assertNotRegex(err.decode(), harness.SANITIZER_RE)
            for line in out.decode().splitlines():
                uid, _, _, _, name = line.split(" ", 4)
                tag = self.tags[base_of(name)]
                self.assertEqual(seen.setdefault(tag, int(uid)), int(uid), tag)
            for tag, v in view.items():
                self.assertEqual(seen.setdefault(tag, v[0]), v[0], tag)
        # Dovecot keys its rescans on second-granular directory mtimes: a
        # change made while it was syncing can stay unseen by it for about
        # a second (measured: up to 1.7 s, then it catches up)
        deadline = time.monotonic() + 10
        while len(self.dovecot_view()) < 37 and time.monotonic() < deadline:
            time.sleep(0.1)
        ours = self.assert_same_view(1 + 12 * 3)
        self.assertEqual(sorted(v[0] for v in ours.values()), list(range(1, 38)))
        self.assertFalse(os.path.exists(os.path.join(self.maildir, "dovecot-uidlist.lock")))


if __name__ == "__main__":
    unittest.main()
