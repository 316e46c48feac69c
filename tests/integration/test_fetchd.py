"""fetchd against a real Dovecot (POP3 and IMAP, plain, STARTTLS and
implicit TLS with a test CA, verification on), delivering into a real
Postfix primary's Maildirs over SMTP, into files through mda:, or into the
scriptable sink: exactly once, multidrop by X-Original-To, the delivery
target down, kill -9 at random moments, the run lock, keep = true,
certificate checks, limits, rejects, -v masking and the daemon's IDLE;
mda: programs (what they inherit, several at once with mda_concurrency)
and the order of the state's disk sync and the deletions on the server.

Every process a test starts (Dovecot, Postfix, the sink, fetchd) is stopped
by its PID, also when the test fails.
"""

import ast
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import dovecot
import harness
import primary

PASSWORD = "s3cret-Pa55"
USERS = ("u0@example.org", "u1@example.org", "u2@example.org")
MID_RE = re.compile(rb"^Message-ID: <([^>]+)>", re.M | re.I)
END_RE = re.compile(rb"END-OF-MESSAGE ([0-9a-z.-]+)")


def fetchd_path():
    return os.path.join(harness.BIN, "fetchd")


def make_message(tag, n, rcpt, size=1024, sender=None):
    """A catch-all copy: Return-Path and X-Original-To on top."""
    sender = sender or "sender%d@remote.test" % n
    filler = b"".join(b"line %04d of the body of message %s\n" % (i, tag.encode())
                      for i in range(max(1, size // 40)))
    return (b"Return-Path: <%s>\n"
            b"X-Original-To: %s\n"
            b"Received: from client.remote.test by mx2.example.test; Fri, 27 Nov 2026 10:00:00 +0000\n"
            b"X-Original-To: forged@elsewhere.test\n"
            b"From: Sender <%s>\n"
            b"To: Someone <list@elsewhere.test>\n"
            b"Subject: message %s\n"
            b"Message-ID: <%s@fetchd.test>\n"
            b"\n"
            b"%s"
            b".a line that starts with a dot\n"
            b"END-OF-MESSAGE %s\n") % (sender.encode(), rcpt.encode(), sender.encode(),
                                       tag.encode(), tag.encode(), filler, tag.encode())


def count_ids(blobs):
    """{message tag: copies} over complete messages (END marker present)."""
    out = {}
    for b in blobs:
        m = END_RE.search(b)
        if m:
            out[m.group(1).decode()] = out.get(m.group(1).decode(), 0) + 1
    return out


_shared = {}


def setUpModule():
    """One CA, one Dovecot with TLS for the whole module (each test has its
    own mailbox user and its own fetchd state directory)."""
    why = dovecot.available()
    if why:
        raise unittest.SkipTest(why)
    if not os.path.exists(fetchd_path()):
        raise unittest.SkipTest("%s is not built" % fetchd_path())
    tmp = tempfile.mkdtemp(prefix="fetchd-test-")
    _shared["tmp"] = tmp
    ca = dovecot.TestCA(tmp)
    cert, key = ca.server("server", dns=("localhost",))
    other_dir = os.path.join(tmp, "other")
    os.mkdir(other_dir)
    _shared.update(ca=ca, cert=cert, key=key,
                   other_ca=dovecot.TestCA(other_dir, name="some other CA"))
    dv = dovecot.Dovecot({"box%d" % i: PASSWORD for i in range(60)}, cert, key)
    _shared["dv"] = dv
    dv.start()


def tearDownModule():
    if "dv" in _shared:
        _shared["dv"].stop()
    if "tmp" in _shared and not harness.KEEP:
        shutil.rmtree(_shared["tmp"], ignore_errors=True)
    _shared.clear()


class FetchdCase(unittest.TestCase):
    """Each test uses its own mailbox user of the module's Dovecot and its
    own fetchd state directory."""

    next_box = [0]

    def setUp(self):
        self.dv = _shared["dv"]
        self.ca, self.cert = _shared["ca"], _shared["cert"]
        self.other_ca = _shared["other_ca"]
        self.box = "box%d" % self.next_box[0]
        self.next_box[0] += 1
        self.dir = tempfile.mkdtemp(prefix="t-", dir=_shared["tmp"])
        self.state = os.path.join(self.dir, "state")
        self.out = os.path.join(self.dir, "out")
        os.mkdir(self.out)
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    # --- helpers ----------------------------------------------------------

    def fill(self, n, size=1024, prefix="m"):
        tags = []
        for i in range(n):
            tag = "%s%d-%d" % (prefix, i, random.randrange(10 ** 9))
            self.dv.add_message(self.box, make_message(tag, i, USERS[i % 3], size))
            tags.append(tag)
        return tags

    def mda_files(self):
        """mda: delivery into OUT, one file per message and recipient; an
        interrupted delivery leaves a tmp. file that is not counted."""
        return ("mda:/bin/sh -c 'f=$(mktemp %s/tmp.XXXXXXXX) && cat > \"$f\" && "
                "mv \"$f\" \"%s/msg.$(basename $f).$1\"' mda %%T" % (self.out, self.out))

    def out_blobs(self, rcpt=None):
        out = []
        for n in sorted(os.listdir(self.out)):
            if n.startswith("msg.") and (rcpt is None or n.endswith("." + rcpt)):
                with open(os.path.join(self.out, n), "rb") as f:
                    out.append(f.read())
        return out

    def config(self, protocol="pop3", tls="starttls", deliver=None, extra="",
               account_extra="", server="localhost", ca=True, box=None):
        lines = ['state = "%s"' % self.state, extra,
                 'account "acct-%s" {' % (box or self.box),
                 '  server = "%s"' % server,
                 '  protocol = "%s"' % protocol,
                 '  port = %d' % self.dv.port(protocol, tls),
                 '  tls = "%s"' % tls,
                 '  user = "%s"' % (box or self.box),
                 '  password = "%s"' % PASSWORD,
                 '  deliver = "%s"' % (deliver or self.mda_files()).replace('"', '\\"'),
                 '  localdomains = { "example.org" }']
        if ca and tls != "none":
            lines.append('  ca = "%s"' % self.ca.cert)
        lines += [account_extra, "}"]
        path = os.path.join(self.dir, "fetchd.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def run_fetchd(self, conf, *args, expect=0, timeout=120):
        cp = subprocess.run([fetchd_path(), "-1", "-f", conf] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=timeout)
        err = cp.stderr.decode("utf-8", "replace")
        self.assertNotRegex(err, harness.SANITIZER_RE, "sanitizer report")
        if expect is not None:
            self.assertEqual(cp.returncode, expect,
                             "fetchd exit %d, expected %d:\n%s\n--- dovecot ---\n%s"
                             % (cp.returncode, expect, err[-4000:], self.dv.log_tail(15)))
        return cp.returncode, err

    def start_fetchd(self, conf, *args):
        p = subprocess.Popen([fetchd_path(), "-f", conf] + list(args),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    def assert_once(self, tags, counts):
        missing = [t for t in tags if counts.get(t, 0) == 0]
        dups = {t: c for t, c in counts.items() if c > 1}
        self.assertEqual(missing, [], "%d messages not delivered" % len(missing))
        self.assertEqual(dups, {}, "delivered more than once")
        self.assertEqual(sorted(counts), sorted(tags))


class Config(FetchdCase):
    def test_version(self):
        cp = subprocess.run([fetchd_path(), "-V"], stdout=subprocess.PIPE, timeout=10)
        self.assertEqual(cp.returncode, 0)
        self.assertRegex(cp.stdout.decode(), r"^fetchd \S+")

    def test_check_reports_file_and_line(self):
        path = os.path.join(self.dir, "bad.conf")
        with open(path, "w") as f:
            f.write('# a comment\n'
                    'state = "/nonexistent/state"\n'
                    'interval = 5x\n'
                    '\n'
                    'account "a" {\n'
                    '  server = "mx2.example.net"\n'
                    '  protocol = "imap4"\n'
                    '  user = "u"\n'
                    '  password = "p"\n'
                    '  deliver = "smtp:[::1:25"\n'
                    '  map "sales@example.org" = "alice"\n'
                    '  map "sales@example.org" = "bob"\n'
                    '  keep = perhaps\n'
                    '  sizelimit = 5\n'
                    '}\n'
                    'account "b" {\n'
                    '  user = "x"\n'
                    '}\n')
        cp = subprocess.run([fetchd_path(), "-n", "-f", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=10)
        err = cp.stderr.decode()
        self.assertEqual(cp.returncode, 1, err)
        for line, text in ((3, "invalid duration '5x'"), (7, "must be one of imap, pop3"),
                           (10, "missing ']'"), (12, "given twice (first on line 11)"),
                           (13, "expected true or false"),
                           (14, "did you mean 'size_limit'"),
                           (16, "server: missing"), (16, "password: missing")):
            self.assertIn("%s:%d: " % (path, line), err)
            self.assertTrue(any(l.startswith("%s:%d: " % (path, line)) and text in l
                                for l in err.splitlines()),
                            "no '%s' at line %d in:\n%s" % (text, line, err))
        self.assertFalse(os.path.exists("/nonexistent/state"))

    def test_unclosed_brace(self):
        path = os.path.join(self.dir, "brace.conf")
        with open(path, "w") as f:
            f.write('account "a" {\n  server = "h"\n')
        cp = subprocess.run([fetchd_path(), "-n", "-f", path], stderr=subprocess.PIPE,
                            timeout=10)
        self.assertEqual(cp.returncode, 1)
        self.assertIn("%s:1: unclosed '{'" % path, cp.stderr.decode())

    def test_example_config_is_valid(self):
        example = os.path.join(harness.ROOT, "conf", "fetchd.conf.example")
        if not os.path.exists(example):
            self.skipTest("no conf/fetchd.conf.example")
        cp = subprocess.run([fetchd_path(), "-n", "-f", example], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=10)
        self.assertEqual(cp.returncode, 0, cp.stderr.decode())
        self.assertEqual(cp.stderr, b"")


class Drain(FetchdCase):
    """200 messages, each delivered exactly once, the mailbox empty after."""

    def drain_mda(self, protocol, tls, account_extra=""):
        tags = self.fill(200)
        conf = self.config(protocol, tls, account_extra=account_extra)
        self.run_fetchd(conf)
        self.assert_once(tags, count_ids(self.out_blobs()))
        self.assertEqual(self.dv.count(self.box), 0)
        # multidrop: each copy went to the user its X-Original-To names
        for i, rcpt in enumerate(USERS):
            got = count_ids(self.out_blobs(rcpt))
            self.assertEqual(sorted(got), sorted(tags[i::3]), rcpt)
        # a second run finds nothing and delivers nothing
        _, err = self.run_fetchd(conf)
        self.assertEqual(len(self.out_blobs()), 200)
        self.assertIn("0 on server", err)

    def test_pop3_starttls_mda(self):
        self.drain_mda("pop3", "starttls")

    def test_pop3_implicit_mda(self):
        self.drain_mda("pop3", "implicit")

    def test_imap_starttls_mda(self):
        self.drain_mda("imap", "starttls")

    def test_imap_implicit_mda(self):
        self.drain_mda("imap", "implicit")

    def test_pop3_mda_concurrency(self):
        self.drain_mda("pop3", "starttls", account_extra="mda_concurrency = 4")

    def test_imap_mda_concurrency(self):
        self.drain_mda("imap", "implicit",
                       account_extra="mda_concurrency = 3\nbatch_count = 16")

    def test_pop3_plain_mda(self):
        tags = self.fill(20)
        self.run_fetchd(self.config("pop3", "none"))
        self.assert_once(tags, count_ids(self.out_blobs()))

    def test_imap_small_batches(self):
        tags = self.fill(50)
        _, err = self.run_fetchd(self.config("imap", "implicit",
                                             account_extra="batch_count = 7\nbatch_size = 3k"))
        self.assert_once(tags, count_ids(self.out_blobs()))
        self.assertEqual(self.dv.count(self.box), 0)


@unittest.skipIf(primary.PostfixPrimary.available(), "no Postfix primary")
class PostfixDelivery(FetchdCase):
    """SMTP delivery into a real Postfix primary's Maildirs."""

    @classmethod
    def setUpClass(cls):
        cls.pf_port = harness.free_ports(1)[0]
        cls.pf = primary.PostfixPrimary(cls.pf_port, ["example.org"], users=USERS)
        try:
            cls.pf.start()
        except Exception:
            cls.pf.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.pf.stop()

    def postfix_counts(self, rcpt=None):
        blobs = []
        for u in ([rcpt] if rcpt else USERS):
            blobs += [b for _, b in self.pf.delivered_messages(u)]
        return count_ids(blobs)

    def wait_postfix(self, tags, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.postfix_counts()
            if sum(got.get(t, 0) for t in tags) >= len(tags):
                return
            time.sleep(0.2)
        self.fail("Postfix did not deliver all messages in time\n" + self.pf.log_tail())

    def drain_smtp(self, protocol, tls):
        tags = self.fill(200, prefix="%s-%s-" % (protocol, tls))
        _, err = self.run_fetchd(self.config(protocol, tls,
                                             deliver="smtp:127.0.0.1:%d" % self.pf_port))
        self.wait_postfix(tags)
        got = self.postfix_counts()
        got = {t: c for t, c in got.items() if t in tags}
        self.assert_once(tags, got)
        for i, rcpt in enumerate(USERS):
            mine = {t for t in self.postfix_counts(rcpt) if t in tags}
            self.assertEqual(mine, set(tags[i::3]), rcpt)
        self.assertEqual(self.dv.count(self.box), 0)
        # the envelope sender came from Return-Path, and the catch-all's
        # Return-Path was not passed on (Postfix wrote its own)
        _, blob = self.pf.delivered_messages(USERS[0])[0]
        self.assertEqual(blob.count(b"Return-Path:"), 1, blob[:400])
        self.assertRegex(blob, rb"^Return-Path: <sender\d+@remote.test>")

    def test_pop3_starttls_postfix(self):
        self.drain_smtp("pop3", "starttls")

    def test_imap_implicit_postfix(self):
        self.drain_smtp("imap", "implicit")


class Failures(FetchdCase):
    def test_target_down_deletes_nothing(self):
        tags = self.fill(30)
        port = harness.free_ports(1)[0]
        conf = self.config("imap", "starttls", deliver="smtp:127.0.0.1:%d" % port)
        _, err = self.run_fetchd(conf, expect=1)
        self.assertIn("unavailable", err)
        self.assertEqual(self.dv.count(self.box), 30)
        with primary.SinkPrimary(port) as sink:
            self.run_fetchd(conf)
            got = count_ids(t.data for _, t in sink.delivered())
        self.assert_once(tags, got)
        self.assertEqual(self.dv.count(self.box), 0)

    def test_target_down_pop3(self):
        tags = self.fill(10)
        port = harness.free_ports(1)[0]
        conf = self.config("pop3", "implicit", deliver="smtp:127.0.0.1:%d" % port)
        self.run_fetchd(conf, expect=1)
        self.assertEqual(self.dv.count(self.box), 10)
        with primary.SinkPrimary(port) as sink:
            self.run_fetchd(conf)
            got = count_ids(t.data for _, t in sink.delivered())
        self.assert_once(tags, got)

    def test_mda_tempfail_keeps_message(self):
        tags = self.fill(5)
        conf = self.config("pop3", "starttls", deliver="mda:/bin/sh -c 'cat >/dev/null; exit 75'")
        _, err = self.run_fetchd(conf)
        self.assertIn("deferred", err)
        self.assertEqual(self.dv.count(self.box), 5)
        self.run_fetchd(self.config("pop3", "starttls"))
        self.assert_once(tags, count_ids(self.out_blobs()))
        self.assertEqual(self.dv.count(self.box), 0)

    def test_partial_rcpt_tempfail_retries_only_missing(self):
        """One recipient deferred: next run delivers only to it."""
        port = harness.free_ports(1)[0]
        # no X-Original-To: To/Cc fallback gives two local recipients
        msg = (b"Return-Path: <a@remote.test>\nTo: u0@example.org, u1@example.org\n"
               b"Subject: two\nMessage-ID: <two@fetchd.test>\n\nbody\nEND-OF-MESSAGE two\n")
        self.dv.add_message(self.box, msg)
        conf = self.config("imap", "starttls", deliver="smtp:127.0.0.1:%d" % port)
        with primary.SinkPrimary(port, rules=[("u1@", "451 4.3.0 try later")]) as sink:
            self.run_fetchd(conf)
            self.assertEqual(self.dv.count(self.box), 1)
            sink.set_rules([])
            self.run_fetchd(conf)
            rcpts = sorted(r for r, _ in sink.delivered())
        self.assertEqual(rcpts, ["u0@example.org", "u1@example.org"])
        self.assertEqual(self.dv.count(self.box), 0)

    def test_on_reject_keep_then_delete(self):
        port = harness.free_ports(1)[0]
        self.fill(3)
        with primary.SinkPrimary(port, rules=[("u1@", "550 5.1.1 no such user")]) as sink:
            _, err = self.run_fetchd(self.config("pop3", "starttls",
                                                 deliver="smtp:127.0.0.1:%d" % port))
            self.assertIn("REJECTED for good, KEPT", err)
            self.assertEqual(self.dv.count(self.box), 1)
            _, err = self.run_fetchd(self.config("pop3", "starttls",
                                                 deliver="smtp:127.0.0.1:%d" % port,
                                                 account_extra='on_reject = "delete"'))
            self.assertIn("DELETED", err)
            self.assertEqual(self.dv.count(self.box), 0)
            self.assertEqual(len(sink.delivered()), 2)

    def test_on_reject_bounce(self):
        port = harness.free_ports(1)[0]
        self.fill(3)
        with primary.SinkPrimary(port, rules=[("u1@", "550 5.1.1 no such user")]) as sink:
            self.run_fetchd(self.config("imap", "implicit", deliver="smtp:127.0.0.1:%d" % port,
                                        account_extra='on_reject = "bounce"'))
            bounces = [t for r, t in sink.delivered() if t.sender in ("", "<>")]
        self.assertEqual(len(bounces), 1)
        self.assertIn(b"5.1.1", bounces[0].data)
        self.assertEqual(self.dv.count(self.box), 0)


class Limits(FetchdCase):
    def test_keep_twice_delivers_once(self):
        tags = self.fill(20)
        conf = self.config("imap", "starttls", account_extra="keep = true")
        self.run_fetchd(conf)
        self.run_fetchd(conf)
        self.assert_once(tags, count_ids(self.out_blobs()))
        self.assertEqual(self.dv.count(self.box), 20)
        conf = self.config("pop3", "implicit", account_extra="keep = true")
        self.run_fetchd(conf)   # same server messages, other protocol: POP3 UIDLs
        self.run_fetchd(conf)
        self.assertEqual(len(self.out_blobs()), 40)
        self.assertEqual(self.dv.count(self.box), 20)

    def test_fetch_limit_and_size_limit(self):
        tags = self.fill(10, size=1000)
        big = "big-%d" % random.randrange(10 ** 9)
        self.dv.add_message(self.box, make_message(big, 99, USERS[0], size=100000))
        conf = self.config("pop3", "starttls",
                           account_extra="fetch_limit = 4\nsize_limit = 50k")
        _, err = self.run_fetchd(conf)
        self.assertIn("larger than size_limit", err)
        self.assertEqual(len(self.out_blobs()), 4)
        for _ in range(3):
            self.run_fetchd(conf)
        self.assert_once(tags, count_ids(self.out_blobs()))
        self.assertEqual(self.dv.count(self.box), 1)   # the big one stays


class Concurrency(FetchdCase):
    def test_second_run_exits_75(self):
        self.fill(5)
        conf = self.config("pop3", "starttls",
                           deliver="mda:/bin/sh -c 'sleep 1; cat > /dev/null'")
        p = self.start_fetchd(conf, "-1")
        lock = os.path.join(self.state, "fetchd.lock")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.path.exists(lock) and os.path.getsize(lock) > 0:
                break
            time.sleep(0.02)
        time.sleep(0.3)
        before = {n: os.stat(os.path.join(self.state, n)).st_mtime_ns
                  for n in os.listdir(self.state)}
        t0 = time.monotonic()
        rc, err = self.run_fetchd(conf, expect=75)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertIn("another fetchd (pid %d)" % p.pid, err)
        p.send_signal(signal.SIGTERM)
        p.wait(30)
        after_names = set(os.listdir(self.state))
        self.assertTrue(set(before) <= after_names)

    def test_kill9_twenty_runs(self):
        """Mail keeps arriving; fetchd is killed at a random moment of a run
        until 20 runs were killed mid-way (a run that finished before its
        kill does not count). Afterwards every message arrived, duplicates
        <= kills."""
        self.kill9_runs("imap", "batch_count = 10", per_kill=1)

    def test_kill9_twenty_runs_concurrent_pop3(self):
        """The same with three mda: programs at once over POP3: nothing
        lost, at most three duplicates per kill (the messages whose
        programs ran, or had exited unrecorded, at the kill)."""
        self.kill9_runs("pop3", "batch_count = 10\nmda_concurrency = 3", per_kill=3)

    def test_kill9_between_delivery_and_delete_keeps_records(self):
        """The 5th delivery program kills fetchd (kill -9) when it is done:
        the first four were recorded but the batch's sync and deletions
        had not happened yet. Records outlive fetchd (written to the log
        file at commit, only the sync is per batch): the next run deletes
        those four without delivering them again, delivers the 5th a
        second time (done, not recorded) and the rest once."""
        tags = self.fill(10)
        killer = ("mda:/bin/sh -c 'f=$(mktemp %s/tmp.XXXXXXXX) && cat > \"$f\" && "
                  "mv \"$f\" \"%s/msg.$(basename $f).$1\" && "
                  "if [ $(ls %s | grep -c ^msg.) -eq 5 ]; then kill -9 $PPID; fi' mda %%T"
                  % (self.out, self.out, self.out))
        rc, err = self.run_fetchd(self.config("pop3", "starttls", deliver=killer), expect=None)
        self.assertEqual(rc, -signal.SIGKILL, err[-2000:])
        self.assertEqual(len(self.out_blobs()), 5)
        self.assertEqual(self.dv.count(self.box), 10)
        _, err = self.run_fetchd(self.config("pop3", "starttls"))
        self.assertIn("4 done before", err)
        counts = count_ids(self.out_blobs())
        self.assertEqual(sorted(counts), sorted(tags))
        self.assertEqual(sum(counts.values()), 11, counts)
        self.assertEqual(counts[tags[4]], 2, "the 5th, delivered and not recorded, goes twice")
        self.assertEqual(self.dv.count(self.box), 0)

    def kill9_runs(self, protocol, account_extra, per_kill):
        conf = self.config(protocol, "starttls", account_extra=account_extra)
        rnd = random.Random(os.getpid())
        tags, kills, runs = self.fill(30, size=600, prefix="k0-"), 0, 0
        while kills < 20 and runs < 100:
            runs += 1
            tags += self.fill(8, size=600, prefix="k%d-" % runs)
            p = self.start_fetchd(conf, "-1")
            time.sleep(rnd.uniform(0.02, 0.3))
            if p.poll() is None:
                p.kill()
                kills += 1
            p.wait(10)
            err = p.stderr.read().decode("utf-8", "replace")
            self.assertNotRegex(err, harness.SANITIZER_RE)
        time.sleep(0.3)     # an orphaned mda finishing its copy
        self.run_fetchd(conf)
        counts = count_ids(self.out_blobs())
        missing = [t for t in tags if counts.get(t, 0) == 0]
        self.assertEqual(missing, [])
        dups = sum(c - 1 for c in counts.values())
        self.assertEqual(kills, 20, "only %d of %d runs were still running at their kill" % (kills, runs))
        self.assertLessEqual(dups, per_kill * kills, "%d duplicates after %d kills" % (dups, kills))
        self.assertEqual(self.dv.count(self.box), 0)


def strace_available():
    if shutil.which("strace") is None:
        return "strace is not installed"
    try:
        cp = subprocess.run(["strace", "-o", "/dev/null", "true"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return "strace does not run: %s" % e
    return None if cp.returncode == 0 else "strace cannot trace here (ptrace refused?)"


STRACE_LINE = re.compile(r"^(\w+)\((\d+)?(.*)\) += (-?\d+)")
LOG_OPEN = re.compile(r'"[^"]*/log\.\d{10}"')


class StateSync(FetchdCase):
    """Records are committed without a device flush each; one sync of the
    state's log per batch comes before the deletions on the server. Checked
    on fetchd's own system calls (strace, plain connections so that the
    commands can be read): every write to a Berkeley DB log file is followed
    by an fdatasync of it before the next DELE, UID STORE or EXPUNGE."""

    def setUp(self):
        super().setUp()
        why = strace_available()
        if why:
            self.skipTest(why)

    def traced_run(self, conf):
        trace = os.path.join(self.dir, "strace.out")
        # LeakSanitizer cannot run under ptrace (the other tests check leaks)
        env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0")
        cp = subprocess.run(["strace", "-o", trace, "-s", "64",
                             "-e", "trace=openat,open,close,write,pwrite64,writev,pwritev,"
                                   "sendto,sendmsg,fsync,fdatasync",
                             fetchd_path(), "-1", "-f", conf],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, env=env)
        err = cp.stderr.decode("utf-8", "replace")
        self.assertNotRegex(err, harness.SANITIZER_RE, "sanitizer report")
        self.assertEqual(cp.returncode, 0, err[-3000:])
        with open(trace) as f:
            return f.read().splitlines()

    def check_order(self, lines, delete_re):
        """(deletions seen, log writes seen, syncs seen); fails at a
        deletion that comes while a log write is not synced."""
        log_fds, dirty = set(), None
        deletes = writes = syncs = 0
        for line in lines:
            m = STRACE_LINE.match(line)
            if not m:
                continue
            call, fd, rest, ret = m.group(1), m.group(2), m.group(3), int(m.group(4))
            if call in ("openat", "open") and LOG_OPEN.search(line) and ret >= 0:
                log_fds.add(ret)
            elif call == "close" and fd is not None:
                log_fds.discard(int(fd))
            elif fd is not None and int(fd) in log_fds and call.startswith(("write", "pwrite")):
                writes += 1
                dirty = dirty or line
            elif fd is not None and int(fd) in log_fds and call in ("fsync", "fdatasync"):
                if ret == 0:
                    syncs += 1
                    dirty = None
            elif call in ("write", "writev", "sendto", "sendmsg") and re.search(delete_re, rest):
                deletes += 1
                self.assertIsNone(dirty, "deleting on the server (%s) while this state log "
                                  "write is not synced: %s" % (line[:120], dirty))
        return deletes, writes, syncs

    def test_pop3_sync_before_dele(self):
        tags = self.fill(23, size=500)
        conf = self.config("pop3", "none", account_extra="batch_count = 5")
        deletes, writes, syncs = self.check_order(self.traced_run(conf), r'"DELE \d+')
        self.assertEqual(deletes, 23)
        self.assertGreaterEqual(writes, 23, "one log write per record at least")
        self.assertGreaterEqual(syncs, 5, "a sync for each of the 5 batches")
        self.assertLess(syncs, 23, "not one sync per message")
        self.assert_once(tags, count_ids(self.out_blobs()))
        self.assertEqual(self.dv.count(self.box), 0)

    def test_imap_sync_before_store_and_expunge(self):
        tags = self.fill(12, size=500)
        conf = self.config("imap", "none", account_extra="batch_count = 4\nmda_concurrency = 2")
        deletes, writes, syncs = self.check_order(self.traced_run(conf),
                                                  r"UID STORE|EXPUNGE")
        self.assertGreaterEqual(deletes, 3)
        self.assertGreaterEqual(syncs, 3)
        self.assert_once(tags, count_ids(self.out_blobs()))
        self.assertEqual(self.dv.count(self.box), 0)

    def test_stale_records_synced_before_delete(self):
        """keep = true records without deleting; the next run with keep =
        false deletes those (done before) after a sync."""
        tags = self.fill(6, size=500)
        self.run_fetchd(self.config("pop3", "none", account_extra="keep = true"))
        self.assertEqual(self.dv.count(self.box), 6)
        lines = self.traced_run(self.config("pop3", "none"))
        deletes, _, syncs = self.check_order(lines, r'"DELE \d+')
        self.assertEqual(deletes, 6)
        self.assertGreaterEqual(syncs, 1)
        self.assert_once(tags, count_ids(self.out_blobs()))
        self.assertEqual(self.dv.count(self.box), 0)


class MdaPrograms(FetchdCase):
    """What an mda: program inherits, and several of them at once."""

    PROBE = (b"import os, sys\n"
             b"fds = {f: os.readlink('/proc/self/fd/%d' % f) for f in range(1024)\n"
             b"       if os.path.lexists('/proc/self/fd/%d' % f)}\n"
             b"blocked = [l for l in open('/proc/self/status') if l.startswith('SigBlk:')]\n"
             b"sys.stdin.buffer.read()\n"
             b"with open(os.path.join(sys.argv[1], 'fds.%d' % os.getpid()), 'w') as f:\n"
             b"    f.write(repr((fds, int(blocked[0].split()[1], 16))))\n")

    def test_program_gets_stdio_only_and_default_signals(self):
        """No POP3/IMAP connection nor state file descriptor leaks into the
        program; SIGPIPE (ignored by fetchd) is back at its default and no
        signal is blocked. The shell notes the signals it ignores (it
        blocks them all while it waits for grep), then becomes a Python
        probe that lists the descriptors it was given (dash keeps copies of
        its own around a redirection) and the blocked signals (Python
        ignores SIGPIPE by itself)."""
        self.fill(3)
        probe = os.path.join(self.dir, "probe.py")
        with open(probe, "wb") as f:
            f.write(self.PROBE)
        mda = ("mda:/bin/sh -c 'grep ^SigIgn: /proc/$$/status > %s/sig.$$; "
               "exec %s %s %s'" % (self.out, sys.executable, probe, self.out))
        self.run_fetchd(self.config("pop3", "implicit", deliver=mda))
        self.assertEqual(self.dv.count(self.box), 0)
        names = os.listdir(self.out)
        self.assertEqual(len([n for n in names if n.startswith("fds.")]), 3, names)
        self.assertEqual(len([n for n in names if n.startswith("sig.")]), 3, names)
        for n in names:
            with open(os.path.join(self.out, n)) as f:
                text = f.read()
            if n.startswith("fds."):
                fds, blocked = ast.literal_eval(text)
                fds = {fd: t for fd, t in fds.items() if t != probe}   # Python's own
                self.assertEqual(sorted(fds), [0, 1, 2], text)
                self.assertTrue(fds[0].startswith("pipe:"), text)
                self.assertEqual(blocked, 0, text)
            else:
                sig = dict(l.split(":") for l in text.splitlines())
                self.assertEqual(int(sig["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1)), 0, text)

    def test_program_that_cannot_run_is_deferred(self):
        self.fill(2)
        _, err = self.run_fetchd(self.config("pop3", "starttls",
                                             deliver="mda:no-such-mda-program-here -f %F"))
        self.assertIn("cannot run no-such-mda-program-here", err)
        self.assertIn("deferred", err)
        self.assertEqual(self.dv.count(self.box), 2)

    def test_programs_run_side_by_side(self):
        """mda_concurrency = 4: programs that each take 0.5 s overlap, never
        more than 4 at once; each message once, in its recipient's file."""
        tags = self.fill(12)
        slow = ("mda:/bin/sh -c 'touch %s/run.$$; ls %s | grep -c ^run. >> %s/width; "
                "sleep 0.5; f=$(mktemp %s/tmp.XXXXXXXX) && cat > \"$f\" && "
                "mv \"$f\" \"%s/msg.$(basename $f).$1\"; rm %s/run.$$' mda %%T"
                % ((self.out,) * 6))
        t0 = time.monotonic()
        self.run_fetchd(self.config("pop3", "starttls", deliver=slow,
                                    account_extra="mda_concurrency = 4"))
        took = time.monotonic() - t0
        self.assert_once(tags, count_ids(self.out_blobs()))
        for i, rcpt in enumerate(USERS):
            self.assertEqual(sorted(count_ids(self.out_blobs(rcpt))), sorted(tags[i::3]))
        with open(os.path.join(self.out, "width")) as f:
            widths = [int(x) for x in f.read().split()]
        self.assertLessEqual(max(widths), 4, widths)
        self.assertGreaterEqual(max(widths), 2, widths)
        self.assertLess(took, 12 * 0.5 * 0.75, "12 programs of 0.5 s took %.1f s" % took)
        self.assertEqual(self.dv.count(self.box), 0)

    def test_side_by_side_outcomes_stay_with_their_message(self):
        """With 3 programs at once, the ones that exit 75 (tempfail) leave
        exactly their own messages on the server; a later run delivers
        those, each message once overall."""
        tags = self.fill(15)
        defer = {t for i, t in enumerate(tags) if i % 4 == 1}
        picky = ("mda:/bin/sh -c 'f=$(mktemp %s/tmp.XXXXXXXX) && cat > \"$f\" && "
                 "if grep -q -E \"END-OF-MESSAGE m(1|5|9|13)-\" \"$f\"; then rm \"$f\"; exit 75; fi; "
                 "sleep 0.0$(( $$ %% 7 )); mv \"$f\" \"%s/msg.$(basename $f).$1\"' mda %%T"
                 % (self.out, self.out))
        _, err = self.run_fetchd(self.config("imap", "starttls", deliver=picky,
                                             account_extra="mda_concurrency = 3"))
        got = count_ids(self.out_blobs())
        self.assertEqual(sorted(got), sorted(set(tags) - defer), err[-2000:])
        self.assertEqual(self.dv.count(self.box), len(defer))
        self.run_fetchd(self.config("imap", "starttls"))
        self.assert_once(tags, count_ids(self.out_blobs()))
        self.assertEqual(self.dv.count(self.box), 0)

    def test_one_program_per_recipient_side_by_side(self):
        """%T with several recipients per message: a program per recipient,
        up to 2 at once, each recipient gets each message once."""
        tags = []
        for i in range(8):
            tag = "multi%d-%d" % (i, random.randrange(10 ** 9))
            tags.append(tag)
            self.dv.add_message(self.box, (
                b"Return-Path: <a@remote.test>\nTo: u0@example.org, u1@example.org\n"
                b"Cc: u2@example.org\nSubject: three\nMessage-ID: <%s@fetchd.test>\n\n"
                b"body\nEND-OF-MESSAGE %s\n") % (tag.encode(), tag.encode()))
        self.run_fetchd(self.config("pop3", "starttls", account_extra="mda_concurrency = 2"))
        for rcpt in USERS:
            self.assert_once(tags, count_ids(self.out_blobs(rcpt)))
        self.assertEqual(self.dv.count(self.box), 0)


class Tls(FetchdCase):
    def test_untrusted_certificate_fails_clearly(self):
        self.fill(3)
        for protocol, tls in (("imap", "implicit"), ("pop3", "starttls")):
            conf = self.config(protocol, tls, ca=False,
                               account_extra='ca = "%s"' % self.other_ca.cert)
            _, err = self.run_fetchd(conf, expect=1)
            self.assertIn("certificate verification failed", err)
            self.assertIn("not logging in", err)
        # no login reached Dovecot
        self.assertNotIn("user=<%s>" % self.box, self.dv.log_tail(200))
        self.assertEqual(self.dv.count(self.box), 3)
        # the system store does not know the test CA either
        _, err = self.run_fetchd(self.config("imap", "implicit", ca=False), expect=1)
        self.assertIn("certificate verification failed", err)
        # verify = false, written out, lets it through
        self.run_fetchd(self.config("pop3", "implicit", ca=False,
                                    account_extra="verify = false"))
        self.assertEqual(self.dv.count(self.box), 0)

    def test_wrong_host_name(self):
        self.fill(1)
        _, err = self.run_fetchd(self.config("imap", "starttls", server="127.0.0.1"), expect=1)
        self.assertIn("is not valid for 127.0.0.1", err)
        self.assertEqual(self.dv.count(self.box), 1)

    def test_pinned_fingerprint(self):
        self.fill(1)
        cp = harness.run_tool(["openssl", "x509", "-in", self.cert, "-noout",
                               "-fingerprint", "-sha256"])
        fp = cp.stdout.decode().strip().split("=", 1)[1]
        bad = "sha256:" + "00" * 32
        _, err = self.run_fetchd(self.config("pop3", "implicit", ca=False,
                                             account_extra='fingerprint = "%s"' % bad),
                                 expect=1)
        self.assertIn("does not match the pinned one", err)
        self.run_fetchd(self.config("pop3", "implicit", ca=False,
                                    account_extra='fingerprint = "sha256:%s"' % fp))
        self.assertEqual(self.dv.count(self.box), 0)

    def test_verbose_trace_masks_password(self):
        self.fill(2)
        for protocol in ("pop3", "imap"):
            _, err = self.run_fetchd(self.config(protocol, "starttls", account_extra="keep = true"),
                                     "-v")
            self.assertIn("C: ", err)
            self.assertIn("****", err)
            self.assertNotIn(PASSWORD, err)


class Daemon(FetchdCase):
    def test_idle_fetches_new_mail_within_seconds(self):
        conf = self.config("imap", "implicit", extra="interval = 1h")
        p = self.start_fetchd(conf, "-d", "-v")
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not os.path.exists(
                    os.path.join(self.state, "fetchd.lock")):
                time.sleep(0.05)
            time.sleep(1.0)     # first pass done, IDLE started
            tags = self.fill(1, prefix="idle")
            t0 = time.monotonic()
            while time.monotonic() - t0 < 10 and not self.out_blobs():
                time.sleep(0.05)
            took = time.monotonic() - t0
            self.assertEqual(sorted(count_ids(self.out_blobs())), tags)
            self.assertLess(took, 3.0)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        err = p.stderr.read().decode("utf-8", "replace")
        self.assertEqual(p.returncode, 0, err[-3000:])
        self.assertNotRegex(err, harness.SANITIZER_RE)


if __name__ == "__main__":
    unittest.main()
