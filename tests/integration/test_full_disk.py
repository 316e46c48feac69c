"""Full disk (issue 9, item 2): the spool, and fetchd's state directory, on
a small filesystem of their own (a tmpfs with a size, mounted by the test,
unmounted in cleanup also when the test fails) that the test fills to the
last byte with a file of its own.

FullSpool       backupmx's spool fills:
  fills, then resumes   mail queued before stays queued and whole; intake
                        answers 452 4.3.1 (not 250, not 451, no crash), in
                        a session that goes on, for small and large (spool
                        file) messages; the primary comes back while the
                        disk is still full (small messages only, so that
                        delivering them frees nothing) and gets everything:
                        the daemon used to die of SIGBUS here (Berkeley
                        DB's region files were sparse), and a state update
                        that cannot be written is kept and written again
                        later instead of sending the message twice; space
                        comes back and intake and redelivery go on by
                        themselves, same process; every message arrives
                        exactly once, byte for byte; the queue ends empty.
  restart while full    SIGTERM with a full spool exits 0; starting on it
                        either fails clearly (exit 1, the reason logged,
                        no crash signal) or runs and answers 452; once
                        there is room it starts and qtool counts every
                        message that was queued; they are all delivered.
FullStateDir    fetchd's state directory fills (against the Dovecot of
                tests/integration/dovecot.py, delivering with mda:):
  full before a run     the run fails clearly (exit 1, "cannot open the
                        state database in DIR: only N KB free on its
                        filesystem"), fetches and deletes nothing; the
                        next run after space came back delivers each
                        message once.
  fills during a run    the delivery command fills the state filesystem
                        half-way through; whatever the run did, nothing is
                        lost (a message gone from the server was delivered)
                        and at most one message is delivered twice (the
                        one delivered but not recorded, fetchd(8)); the
                        next run finishes the job.

Root only (mount); skipped otherwise, and when tmpfs cannot be mounted.
The tmpfs for the spool is 256 MB: the daemon reserves its Berkeley DB
regions (~90 MB) and keeps ~96 MB free (cache + two log files) before it
queues anything.
"""

import atexit
import contextlib
import errno
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import harness
from harness import Daemon, queue_count, send_messages, wait_until
from primary import SinkPrimary

SPOOL_FS_SIZE = "256m"
STATE_FS_SIZE = "8m"
SENDER = "sender@sender.test"

_mounted = set()


@atexit.register
def _unmount_all():
    """Last resort (the run was interrupted): lazy unmounts, since a daemon
    may still hold files there."""
    for path in list(_mounted):
        subprocess.run(["umount", "-l", path], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        _mounted.discard(path)


class SmallFs:
    """A tmpfs of SIZE at PATH, a filler file to fill it."""

    def __init__(self, path, size):
        self.path = path
        self.size = size
        self.filler = os.path.join(path, "filler")

    def mount(self):
        os.makedirs(self.path, exist_ok=True)
        cp = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % self.size,
                             "tmpfs", self.path], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=30)
        if cp.returncode != 0:
            raise unittest.SkipTest("cannot mount a tmpfs: %s"
                                    % cp.stdout.decode("utf-8", "replace").strip())
        _mounted.add(self.path)

    def unmount(self):
        if self.path not in _mounted:
            return
        for _ in range(50):
            if subprocess.run(["umount", self.path], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0:
                _mounted.discard(self.path)
                return
            time.sleep(0.1)
        subprocess.run(["umount", "-l", self.path])
        _mounted.discard(self.path)

    def avail(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self):
        """Writes the filler until the filesystem refuses (root has no
        reserve on tmpfs: nothing is left for anybody)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        block = b"\0" * 65536
        try:
            while True:
                try:
                    os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    if len(block) == 1:
                        return
                    block = block[:len(block) // 16 or 1]
        finally:
            os.close(fd)

    def free(self):
        for name in (self.filler, self.filler + ".tail"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def need_root(case):
    if not harness.is_root():
        case.skipTest("needs root: mounting a small filesystem")


def body_msg(token, size):
    lines = [b"From: <sender@sender.test>", b"To: <user@example.test>",
             b"Subject: " + token.encode(), b"Message-ID: <" + token.encode() + b"@sender.test>",
             b""]
    n = 0
    while n < size:
        l = b"%s line %06d ....................................................." % (
            token.encode(), n)
        lines.append(l)
        n += len(l) + 2
    return b"\r\n".join(lines) + b"\r\nend " + token.encode() + b"\r\n"


# =============================================================================
# backupmx: the spool
# =============================================================================

SPOOL_TEMPLATE = """# backupmx full-disk test config (generated)
hostname = "%s"
spool = "@TMP@/fs/spool"
listen = { @LISTEN@ }
limits { @LIMITS@ }
queue { retry_min = 1s  retry_max = 2s  lifetime = 1h  delay_warning = 0  concurrency = 4 }
domain "example.test" { mode = "relay"  primary = { "127.0.0.1:%%(primary)d" } }
domain "sender.test"  { mode = "relay"  primary = { "127.0.0.1:%%(dsn)d" } }
""" % harness.HOSTNAME


class FullSpool(unittest.TestCase):
    TIMEOUT = 120
    maxDiff = None

    def setUp(self):
        need_root(self)
        pport, dport = harness.free_ports(2)
        self.primary = SinkPrimary(pport, greeting="421 4.3.2 primary down for the test")
        self.addCleanup(self.primary.stop)
        self.dsn = SinkPrimary(dport)
        self.addCleanup(self.dsn.stop)
        self.d = Daemon(template=SPOOL_TEMPLATE % dict(primary=pport, dsn=dport),
                        limits=dict(errors=1000))
        self.addCleanup(self.d.cleanup)          # runs last: after the unmount
        self.fs = SmallFs(self.d.path("fs"), SPOOL_FS_SIZE)
        self.fs.mount()
        self.addCleanup(self.unmount)
        # the spool belongs to the user the daemon runs as, like Daemon's own
        nobody = pwd.getpwnam("nobody")
        self.d.spool = os.path.join(self.fs.path, "spool")
        os.mkdir(self.d.spool, 0o700)
        os.chown(self.d.spool, nobody.pw_uid, nobody.pw_gid)
        self.d.start()

    def unmount(self):
        self.d.kill9()           # nothing may hold the filesystem
        self.fs.unmount()

    def tearDown(self):
        # no sanitizer report, whatever the test did (a crash fails stop())
        reports = self.d.sanitizer_reports()
        if reports:
            self.fail("sanitizer report in the daemon log:\n" + reports)

    # --- helpers -------------------------------------------------------------
    def items(self, what, n, big_every=0):
        run = "%x" % int(time.time() * 1000)
        out = []
        for i in range(n):
            token = "bmx-full-%s-%03d-%s" % (what, i, run)
            size = 300 * 1024 if big_every and i % big_every == 0 else 2000
            out.append(dict(sender=SENDER, rcpts=["%s-%03d@example.test" % (what, i)],
                            msg=body_msg(token, size)))
        return out

    def refused(self, c, msg):
        """One transaction that must end in 452 4.3.1 at the end of data."""
        c.check("MAIL FROM:<%s>" % SENDER, 250, "2.1.0")
        c.check("RCPT TO:<late@example.test>", 250, "2.1.5")
        c.check("DATA", 354)
        c.send(harness.dot_stuff(msg))
        r = c.reply()
        if r.code != 452 or r.enh != "4.3.1" or "insufficient system storage" \
                not in r.text.lower():
            c.fail("a full spool must answer 452 4.3.1 Insufficient system "
                   "storage, got %r" % r.text)

    def delivered_once(self, items, qids):
        """Each item exactly once at the primary, byte for byte."""
        problems = []
        for it, qid in zip(items, qids):
            rcpt = it["rcpts"][0]
            got = self.primary.messages_to(rcpt)
            if len(got) != 1:
                problems.append("%s (%s): %d copies" % (rcpt, qid, len(got)))
                continue
            rec, rest = harness.split_received(got[0].data)
            if qid.encode() not in rec or rest != it["msg"]:
                problems.append("%s (%s): not the message queued" % (rcpt, qid))
        self.assertEqual(problems, [], "what the primary got")

    def wait_primary(self, items, what, timeout=30):
        """Until every item reached the primary; fails at once, saying
        how, if the daemon dies meanwhile."""
        def done():
            if not self.d.running():
                rc = self.d.proc.returncode if self.d.proc else None
                raise AssertionError("the daemon died (%s) while waiting for %s\n%s"
                                     % ("signal %d" % -rc if rc and rc < 0 else
                                        "exit %s" % rc, what, self.d.log_tail(15)))
            return all(self.primary.messages_to(it["rcpts"][0]) for it in items)
        wait_until(done, timeout, what, detail=lambda: self.d.log_tail(15))

    def wait_removed(self, qids, since, timeout=20):
        """Every message left the queue ("QID: removed")."""
        def left():
            log = self.d.log(since)
            return [q for q in qids if "%s: removed" % q not in log]
        wait_until(lambda: not left(), timeout, "every message removed from the queue",
                   detail=lambda: "%r\n%s" % (left()[:5], self.d.log_tail(20)))

    # --- tests ---------------------------------------------------------------
    def test_spool_fills_452_then_intake_and_redelivery_resume(self):
        d = self.d
        pid = d.pid
        mark = d.log_mark()
        before = self.items("before", 40)
        qids = send_messages(d.port, before, sessions=2)

        self.fs.fill()
        self.assertLess(self.fs.avail(), 64 * 1024, "the filler did not fill it")
        c = d.connect()
        self.addCleanup(c.close)
        c.ehlo()
        self.refused(c, body_msg("bmx-full-refused-small", 2000))
        c.check("RSET", 250)
        c.check("NOOP", 250)
        self.refused(c, body_msg("bmx-full-refused-large", 300 * 1024))
        c.quit()
        c2 = d.connect()
        self.addCleanup(c2.close)
        c2.ehlo()
        self.refused(c2, body_msg("bmx-full-refused-again", 500))
        c2.quit()
        self.assertTrue(d.running(), "the daemon died on a full spool\n" + d.log_tail())
        d.wait_log(r"warning: [0-9A-Z]{16}: not queued: .*free in ", 5, since=mark)

        # the primary comes back while the spool is still full: delivering
        # needs the queue too (reads, state updates that cannot be written)
        self.primary.set_greeting("220 mx1.example.test ESMTP")
        self.wait_primary(before, "the %d messages queued before the disk filled"
                          % len(before))
        self.assertTrue(d.running(), "the daemon died delivering from a full spool\n"
                        + d.log_tail())

        # room again: no restart, intake and delivery go on
        self.fs.free()
        after = self.items("after", 5)
        qids_after = send_messages(d.port, after, sessions=1)
        self.wait_primary(after, "the messages queued after space came back")
        self.wait_removed(qids + qids_after, mark)
        time.sleep(1.5)                  # a duplicate would show now
        # A state update that met the full disk is kept and written again
        # (not left to its lease, which would send the message twice).
        log = d.log(mark)
        retried = re.findall(r"([0-9A-Z]{16}): cannot record delivery state of "
                             r"recipient (\d+): will retry", log)
        for qid, idx in retried:
            self.assertRegex(log, r"%s: delivery state of recipient %s recorded after"
                             % (qid, idx))
        print("# full spool: %d state update(s) written again once there was room"
              % len(retried))
        self.assertEqual(d.pid, pid)
        self.assertEqual(d.starts, 1, "the daemon was restarted")
        self.delivered_once(before, qids)
        self.delivered_once(after, qids_after)
        self.assertEqual(self.primary.messages_to("late@example.test"), [],
                         "a message answered with 452 was delivered")
        self.assertEqual(self.dsn.transactions, [], "something bounced")
        d.stop()
        self.assertEqual(queue_count(harness.BUILD, d.spool, d.run_ids), (0, 0))

    def test_restart_while_full_keeps_the_queue(self):
        d = self.d
        items = self.items("restart", 10, big_every=4)
        qids = send_messages(d.port, items, sessions=2)
        self.fs.fill()
        d.stop()                         # exit 0, no sanitizer report
        try:
            d.start()
        except harness.DaemonError as e:
            # it may refuse to start: with a reason, not a crash
            self.assertRegex(str(e), r"exited with 1 during start-up", str(e))
            self.assertRegex(d.log(), r"queue: .*No space left on device")
        else:
            c = d.connect()
            self.addCleanup(c.close)
            c.ehlo()
            self.refused(c, body_msg("bmx-full-refused-restart", 500))
            c.quit()
            d.stop()
        self.fs.free()
        d.start()
        d.stop()
        self.assertEqual(queue_count(harness.BUILD, d.spool, d.run_ids), (10, 10),
                         "the queue after a stop and a start on a full spool")
        d.start()
        mark = d.log_mark()
        self.primary.set_greeting("220 mx1.example.test ESMTP")
        self.wait_primary(items, "the queued messages after the restart")
        self.wait_removed(qids, mark)
        time.sleep(1)
        self.delivered_once(items, qids)


# =============================================================================
# fetchd: the state directory
# =============================================================================

class FullStateDir(unittest.TestCase):
    TIMEOUT = 120

    @classmethod
    def setUpClass(cls):
        if not harness.is_root():
            raise unittest.SkipTest("needs root: mounting a small filesystem")
        import dovecot
        import test_fetchd
        why = dovecot.available()
        if why:
            raise unittest.SkipTest(why)
        if not os.path.exists(test_fetchd.fetchd_path()):
            raise unittest.SkipTest("%s is not built" % test_fetchd.fetchd_path())
        cls.tf = test_fetchd
        cls.tmp = tempfile.mkdtemp(prefix="fetchd-full-")
        if not harness.KEEP:
            cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.ca = dovecot.TestCA(cls.tmp)
        cert, key = cls.ca.server("server", dns=("localhost",))
        cls.dv = dovecot.Dovecot({"full%d" % i: test_fetchd.PASSWORD for i in range(4)},
                                 cert, key)
        cls.addClassCleanup(cls.dv.stop)
        cls.dv.start()

    def setUp(self):
        self.box = "full%d" % FullStateDir.next_box
        FullStateDir.next_box += 1
        self.dir = tempfile.mkdtemp(prefix="t-", dir=self.tmp)
        self.out = os.path.join(self.dir, "out")
        os.mkdir(self.out)
        self.fs = SmallFs(os.path.join(self.dir, "statefs"), STATE_FS_SIZE)
        self.fs.mount()
        self.addCleanup(self.fs.unmount)
        self.state = os.path.join(self.fs.path, "state")

    next_box = 0

    def config(self, deliver=None):
        tf = self.tf
        lines = ['state = "%s"' % self.state,
                 'account "acct-%s" {' % self.box,
                 '  server = "localhost"',
                 '  protocol = "imap"',
                 '  port = %d' % self.dv.port("imap", "starttls"),
                 '  tls = "starttls"',
                 '  ca = "%s"' % self.ca.cert,
                 '  user = "%s"' % self.box,
                 '  password = "%s"' % tf.PASSWORD,
                 '  deliver = "%s"' % (deliver or self.mda()).replace('"', '\\"'),
                 '  localdomains = { "example.org" }',
                 '}']
        path = os.path.join(self.dir, "fetchd.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def mda(self, fill_after=None):
        """One file per delivered message in OUT; with FILL_AFTER, the
        delivery that makes it FILL_AFTER files also fills the state
        filesystem (once), as any other program on that disk might."""
        script = ('f=$(mktemp {out}/tmp.XXXXXXXX) && cat > "$f" && '
                  'mv "$f" "{out}/msg.$(basename $f).$1"')
        if fill_after is not None:
            # 64 KB blocks, then 512-byte ones for the last partial block
            script += (' && {{ n=$(ls {out} | grep -c "^msg"); '
                       'if [ "$n" -ge {k} ] && [ ! -e {filler} ]; then '
                       'dd if=/dev/zero of={filler} bs=64k 2>/dev/null; '
                       'dd if=/dev/zero of={filler}.tail bs=512 2>/dev/null; fi; true; }}')
        script = script.format(out=self.out, k=fill_after, filler=self.fs.filler)
        return "mda:/bin/sh -c '%s' mda %%T" % script

    def run_fetchd(self, conf):
        cp = subprocess.run([self.tf.fetchd_path(), "-1", "-f", conf],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=90)
        err = cp.stderr.decode("utf-8", "replace")
        self.assertNotRegex(err, harness.SANITIZER_RE, "sanitizer report")
        self.assertGreaterEqual(cp.returncode, 0, "fetchd died of signal %d:\n%s"
                                % (-cp.returncode, err[-3000:]))
        return cp.returncode, err

    def fill_box(self, n, prefix):
        tags = []
        for i in range(n):
            tag = "%s%d-%d" % (prefix, i, int(time.time() * 1000) % 10 ** 9)
            self.dv.add_message(self.box, self.tf.make_message(tag, i, self.tf.USERS[i % 3]))
            tags.append(tag)
        return tags

    def delivered(self):
        blobs = []
        for n in os.listdir(self.out):
            if n.startswith("msg."):
                with open(os.path.join(self.out, n), "rb") as f:
                    blobs.append(f.read())
        return self.tf.count_ids(blobs)

    def on_server(self):
        """Tags of the messages still in the Maildir (new/ and cur/)."""
        base = self.dv.maildir(self.box)
        tags = []
        for sub in ("new", "cur"):
            for n in os.listdir(os.path.join(base, sub)):
                with open(os.path.join(base, sub, n), "rb") as f:
                    m = self.tf.END_RE.search(f.read())
                if m:
                    tags.append(m.group(1).decode())
        return tags

    def test_full_before_a_run_fails_clearly_and_deletes_nothing(self):
        conf = self.config()
        first = self.fill_box(3, "pre")
        rc, err = self.run_fetchd(conf)
        self.assertEqual(rc, 0, err)
        self.fs.fill()
        tags = self.fill_box(10, "full")
        rc, err = self.run_fetchd(conf)
        self.assertEqual(rc, 1, "a run with a full state directory must fail:\n" + err)
        self.assertRegex(err, r"error: cannot open the state database in %s: only "
                         r"\d+ KB free on its filesystem" % re.escape(self.state), err)
        self.assertEqual(sorted(self.on_server()), sorted(tags), "the server's mailbox")
        self.assertEqual(sorted(self.delivered()), sorted(first), "nothing more delivered")
        self.fs.free()
        rc, err = self.run_fetchd(conf)
        self.assertEqual(rc, 0, err)
        got = self.delivered()
        self.assertEqual({t: got.get(t) for t in tags}, {t: 1 for t in tags},
                         "each message once after space came back")
        self.assertEqual(self.on_server(), [])

    def test_fills_during_a_run_loses_nothing(self):
        n = 40
        tags = self.fill_box(n, "mid")
        conf = self.config(deliver=self.mda(fill_after=n // 4))
        rc, err = self.run_fetchd(conf)
        self.assertTrue(os.path.exists(self.fs.filler), "the run never filled the "
                        "state filesystem: the test did not test anything\n" + err)
        got = self.delivered()
        left = self.on_server()
        lost = [t for t in tags if t not in left and t not in got]
        self.assertEqual(lost, [], "deleted from the server, never delivered:\n" + err)
        if rc != 0:
            self.assertRegex(err, r"error: .*(state|bdb)", "a failed run says why")
        self.fs.free()
        conf = self.config()
        rc2, err2 = self.run_fetchd(conf)
        self.assertEqual(rc2, 0, err2)
        got = self.delivered()
        self.assertEqual(sorted(got), sorted(tags), "every message delivered")
        dups = {t: c for t, c in got.items() if c > 1}
        # fetchd(8): only a message delivered but not yet recorded goes twice
        self.assertLessEqual(len(dups), 1, "duplicates: %r\n--- run 1 (exit %d) ---\n%s"
                             % (dups, rc, err[-3000:]))
        self.assertEqual(self.on_server(), [])
        print("# fetchd, state filled mid-run: first run exit %d, %d delivered, "
              "%d left on the server, %d duplicate(s)" % (rc, sum(got.values()) - len(dups),
                                                          len(left), len(dups)))


class FullMaildir(unittest.TestCase):
    """The catch-all Maildir on a full filesystem (the spool elsewhere):
    end of data answers 452 4.3.1 and nothing (not even a part) is left in
    new/, for one recipient and for several (the copies made before the
    failing one are taken back); the session goes on; once there is room,
    the same process stores mail again, every copy whole."""

    TIMEOUT = 120

    def setUp(self):
        need_root(self)
        from catchall_util import CatchallDaemon
        self.fs = SmallFs(tempfile.mkdtemp(prefix="bmx-fullmd-"), "4m")
        self.fs.mount()
        self.addCleanup(shutil.rmtree, self.fs.path, True)
        self.addCleanup(self.fs.unmount)
        maildir = os.path.join(self.fs.path, "catch")
        nobody = pwd.getpwnam("nobody")
        os.mkdir(maildir, 0o700)
        os.chown(maildir, nobody.pw_uid, nobody.pw_gid)
        self.d = CatchallDaemon(pop3_tls=None, imap_tls=None, maildir=maildir)
        self.addCleanup(self.d.cleanup)
        self.d.start()

    def whole(self):
        for sub, name in self.d.maildir_files():
            raw = self.d.read_message(sub, name)
            size = int(re.search(r",S=(\d+)", name).group(1))
            self.assertEqual(size, len(raw), name)
            self.assertTrue(raw.endswith(b"END\r\n"), name)
        return len(self.d.maildir_files())

    def test_full_maildir_452_nothing_partial_then_resumes(self):
        msg = harness.make_message(subject="full", body=(b"x" * 78 + b"\r\n") * 750 + b"END\r\n")
        self.d.deliver(["before@catch.test"], body=msg)
        self.fs.fill()
        for rcpts in (["one@catch.test"], ["a@catch.test", "b@catch.test", "c@catch.test"]):
            with self.d.connect() as c:
                c.ehlo()
                c.check("MAIL FROM:<s@example.net>", 250)
                for r in rcpts:
                    c.check("RCPT TO:<%s>" % r, 250)
                c.check("DATA", 354)
                c.send(harness.dot_stuff(msg))
                c.expect(c.reply(), 452, "4.3.1")
                c.check("NOOP", 250)            # the session goes on
            self.assertEqual(self.whole(), 1, "only the message from before the disk filled")
            self.assertEqual(self.d.maildir_files(("tmp",)), [])
            # room for one copy, not three: the first is made, the second
            # fails, the first is taken back
            size = os.path.getsize(self.fs.filler)
            os.truncate(self.fs.filler, size - 100 * 1024)
        self.assertTrue(self.d.running())
        self.fs.free()
        self.d.deliver(["a@catch.test", "b@catch.test", "c@catch.test"], body=msg)
        self.assertEqual(self.whole(), 4)
        log = self.d.log()
        self.assertRegex(log, r"status=deferred \(cannot write .*No space left on device")
        # the failed three-recipient try is logged deferred for each copy
        # (none of them stayed), then the try after the space came back sent
        for r in ("a", "b", "c"):
            self.assertEqual(len(re.findall(r"to=<%s@catch.test>, relay=local, mailbox=catch, "
                                            r"status=deferred" % r, log)), 1, r)
            self.assertEqual(len(re.findall(r"to=<%s@catch.test>, relay=local.*status=sent" % r,
                                            log)), 1, r)
