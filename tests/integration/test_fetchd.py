"""fetchd against a real Dovecot (POP3 and IMAP, plain, STARTTLS and
implicit TLS with a test CA, verification on), delivering into a real
Postfix primary's Maildirs over SMTP, into files through mda:, or into the
scriptable sink: exactly once, multidrop by X-Original-To, the delivery
target down, kill -9 at random moments, the run lock, keep = true,
certificate checks, limits, rejects, -v masking and the daemon's IDLE.

Every process a test starts (Dovecot, Postfix, the sink, fetchd) is stopped
by its PID, also when the test fails.
"""

import os
import random
import re
import shutil
import signal
import subprocess
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

    def drain_mda(self, protocol, tls):
        tags = self.fill(200)
        conf = self.config(protocol, tls)
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
        conf = self.config("imap", "starttls", account_extra="batch_count = 10")
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
        self.assertLessEqual(dups, kills, "%d duplicates after %d kills" % (dups, kills))
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
