"""The workloads of issue 8. Each returns rows of measurements; every
round verifies that no mail was lost and raises BenchFailure otherwise.

A row is a dict: workload, system, metric, unit, better ("higher" or
"lower"), value, n (messages), extra (free text for the notes).
"""

import contextlib
import os
import poplib
import pwd
import re
import shutil
import socket
import ssl  # noqa: F401  (kept for TLS idle sessions)
import subprocess
import sys
import tempfile
import time

from .common import (BUILD, ROOT, BenchFailure, busy_cpu, compile_c, log,
                     mem_of, raise_nofile, run_timed, settle_disk, tree_cpu, wait_until)
from . import systems
from .systems import (SENDER, RCPT, Backupmx, NullSmtp, OpenSMTPD, PostfixBackup,
                      PostfixFinal, Sink)

sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import dovecot as dovecot_mod  # noqa: E402


# The reference row of the MDA drains (DrainBench.mda_alone).
MDA_ALONE = "floor: the MDA alone, one at a time"


def split_dest(dest):
    """"mda4" is the MDA with fetchd's mda_concurrency = 4: ("mda", 4)."""
    if dest.startswith("mda") and dest[3:].isdigit():
        return "mda", int(dest[3:])
    return dest, 1


def dest_label(dest):
    d, conc = split_dest(dest)
    return d if conc == 1 else "%s (mda_concurrency %d)" % (d, conc)


def row(workload, system, metric, unit, better, value, n=None, extra=""):
    return dict(workload=workload, system=system, metric=metric, unit=unit,
                better=better, value=value, n=n, extra=extra)


def make_system(kind, primary_port, **kw):
    if kind == "backupmx":
        return Backupmx(primary_port, **kw)
    if kind == "postfix":
        return PostfixBackup(primary_port, **kw)
    if kind == "opensmtpd":
        return OpenSMTPD(primary_port, shim=True)
    if kind == "opensmtpd-stock":
        return OpenSMTPD(primary_port, shim=False)
    if kind == "floor":
        return NullSmtp()
    raise ValueError(kind)


# --- 1 + 2: durable intake with the primary down, then the flush -------------------

def intake_once(kind, sessions, msgs, size, flush=None, snapshots=None, timeout=600):
    """One intake run into a fresh KIND; with FLUSH ("sink" or "postfix"),
    then the flush of the queue to that primary (smtp-sink or a real
    Postfix primary). With SNAPSHOTS (a dict), a copy of the queue as the
    intake left it is put there under KIND first, for flush_snapshot().
    Returns rows."""
    wl = "intake -s %d -m %d -l %d" % (sessions, msgs, size)
    dead = systems.free_port()
    s = make_system(kind, dead)
    name = getattr(s, "label", kind)
    rows = []
    try:
        s.start()
        time.sleep(0.3)
        settle_disk()
        root = s.root_pid()
        d0 = tree_cpu(root)
        c0, t0 = busy_cpu(), time.monotonic()
        rc, wall, gen_cpu, out = run_timed(
            ["smtp-source", "-s", str(sessions), "-m", str(msgs), "-l", str(size),
             "-f", SENDER, "-t", RCPT, "127.0.0.1:%d" % s.port], timeout=timeout)
        if rc != 0:
            raise BenchFailure("%s: smtp-source exit %d: %s" % (name, rc, out[-500:]))
        # Postfix also has to move the mail out of incoming/ (qmgr), part of
        # its cost per message; backupmx and OpenSMTPD are done at the 250.
        wait_until(s.settled, 120, "%s: queue settled" % name, 0.1)
        c1, t1 = busy_cpu(), time.monotonic()
        own = tree_cpu(root) - d0
        # Everything acknowledged must be in the queue. Counted after the
        # measurement: `bmxq stats` walks backupmx's whole queue, which is
        # the benchmark's work, not the cost of taking the mail in.
        wait_until(lambda: s.live_count() >= msgs, 120,
                   "%s: %d messages in the queue" % (name, msgs), 0.1)
        cpu = c1 - c0 - gen_cpu
        disk = s.disk_kib()
        # the check that counts: the stored queue
        if kind == "backupmx":
            s.stop()
            stored = s.stored_count()
            how = "qtool count after stop"
        elif kind == "postfix":
            stored = s.postqueue_count()
            how = "postqueue -p"
        elif kind == "floor":
            stored = s.stored_count()
            how = "messages in its file"
        else:
            stored = s.stored_count()
            how = "message dirs in queue/"
        if stored != msgs:
            raise BenchFailure("%s: LOST MAIL: %d of %d messages in the queue (%s)"
                               % (name, stored, msgs, how))
        if snapshots is not None:
            snapshots[kind] = snapshot_queue(s, kind)
        rows.append(row(wl, name, "accept rate", "msg/s", "higher", msgs / wall, msgs,
                        "queued %d (%s), %d KiB on disk" % (stored, how, disk or 0)))
        rows.append(row(wl, name, "CPU per 1000 msgs", "CPU-s", "lower",
                        cpu / msgs * 1000, msgs,
                        "busy %.1f CPU-s over %.1f s minus smtp-source %.1f"
                        % (c1 - c0, t1 - t0, gen_cpu)))
        rows.append(row(wl, name, "daemon CPU per 1000 msgs", "CPU-s", "lower",
                        own / msgs * 1000, msgs, "process tree %.1f CPU-s" % own))
        log("  %-16s %-26s %7.0f msg/s  %.2f CPU-s/1000 machine, %.2f daemon  (queued %d, %s)"
            % (name, wl, msgs / wall, cpu / msgs * 1000, own / msgs * 1000, stored, how))
        if flush:
            if kind == "backupmx":
                s.start()
                time.sleep(0.3)
            rows.extend(flush_once(s, name, msgs, size, flush, dead, timeout))
    finally:
        s.cleanup()
    return rows


# Not copied from a Postfix queue_directory: sockets and the pid file.
POSTFIX_RUNTIME = ("pid", "public", "private")


def snapshot_queue(s, kind):
    """A copy of S's queue (backupmx: the stopped daemon's whole spool;
    Postfix: its queue directories, qmgr having settled) in a directory of
    its own, synced so that its write-back does not fall into the next
    measurement."""
    snap = systems.mkstate("bench-snap-")
    t0 = time.monotonic()
    if kind == "backupmx":
        src = [(s.spool, "spool")]
    elif kind == "postfix":
        if not s.settled():
            raise BenchFailure("postfix: queue not settled for the snapshot")
        src = [(os.path.join(s.spool, q), q) for q in sorted(os.listdir(s.spool))
               if q not in POSTFIX_RUNTIME]
    else:
        raise ValueError(kind)
    for path, name in src:
        subprocess.run(["cp", "-a", path, os.path.join(snap, name)], check=True)
    subprocess.run(["sync", "-f", snap], check=False)
    log("  %-16s queue copied for the Postfix-primary flush in %.1f s"
        % (kind, time.monotonic() - t0))
    return snap


def flush_snapshot(kind, snap, msgs, size, to="postfix", timeout=600):
    """A fresh KIND on the queue copied by snapshot_queue() (moved into its
    state directory), flushed to TO. Returns rows."""
    dead = systems.free_port()
    s = make_system(kind, dead)
    name = getattr(s, "label", kind)
    try:
        if kind == "backupmx":
            os.rmdir(s.spool)
            os.rename(os.path.join(snap, "spool"), s.spool)
        else:
            for q in os.listdir(snap):
                os.rename(os.path.join(snap, q), os.path.join(s.spool, q))
            # the copies' names no longer match their inodes: `postfix start`
            # runs postsuper's structure check, which renames them and logs
            # that (as the mail owner: it must be able to write the log)
            pf = pwd.getpwnam("postfix")
            with open(s.maillog, "a"):
                pass
            os.chown(s.maillog, pf.pw_uid, pf.pw_gid)
        s.start()
        n = s.live_count()
        if n != msgs:
            raise BenchFailure("%s: %d of %d messages in the copied queue" % (name, n, msgs))
        time.sleep(0.3)
        return flush_once(s, name, msgs, size, to, dead, timeout)
    finally:
        s.cleanup()
        shutil.rmtree(snap, ignore_errors=True)


def wait_flushed(s, name, accepted, msgs, timeout):
    """Waits until the primary has accepted MSGS (ACCEPTED(), cheap) and then
    until S's queue is empty; returns that moment. The queue itself is only
    looked at every 2 s before then: `bmxq stats` walks backupmx's whole
    queue, and polling it all along would load the daemon being measured. A
    queue that is empty while the primary has fewer than MSGS for 10 s is
    lost mail."""
    t0 = time.monotonic()
    last_look = t0
    empty_since = None
    while True:
        now = time.monotonic()
        got = accepted()
        if got >= msgs:
            if s.live_count() == 0:
                return time.monotonic()
            time.sleep(0.01)
            continue
        if now - last_look >= 2.0:
            last_look = now
            if s.live_count() == 0:
                empty_since = empty_since or now
                if now - empty_since > 10:
                    raise BenchFailure("%s: LOST MAIL in flush: the queue is empty, "
                                       "the primary got %d of %d" % (name, got, msgs))
            else:
                empty_since = None
        if now - t0 > timeout:
            raise BenchFailure("%s: flush not done after %ss: the primary got %d of %d"
                               % (name, timeout, got, msgs))
        time.sleep(0.05)


def flush_once(s, name, msgs, size, to, port, timeout=600):
    """Flushes S's queue of MSGS messages to a primary started on PORT:
    smtp-sink (TO == "sink") or a real Postfix primary (TO == "postfix").
    Time from the primary's start (smtp-sink: before it is spawned; Postfix:
    once it answers 220, since its own start-up takes a second or two) until
    S's queue is empty, after which the primary must have all MSGS."""
    if to == "sink":
        prim = Sink(port=port)
        fl = "flush %d x %d B to smtp-sink" % (msgs, size)
        accepted = delivered = prim.count
    else:
        prim = PostfixFinal(port)
        fl = "flush %d x %d B to a Postfix primary" % (msgs, size)
        accepted, delivered = prim.accepted, prim.delivered
    try:
        settle_disk()
        root = s.root_pid()
        if to == "sink":
            d0 = tree_cpu(root)
            c0, t0 = busy_cpu(), time.monotonic()
            prim.start()
        else:
            prim.start()
            d0 = tree_cpu(root)
            c0, t0 = busy_cpu(), time.monotonic()
        s.flush()
        t1 = wait_flushed(s, name, accepted, msgs, timeout)
        c1 = busy_cpu()
        own = tree_cpu(root) - d0
        # Postfix: what it accepted must also be delivered (discard)
        with contextlib.suppress(BenchFailure):
            wait_until(lambda: delivered() >= msgs, 60, "delivery", 0.1)
        got = delivered()
        if got < msgs:
            raise BenchFailure("%s: LOST MAIL in flush: the primary got %d of %d"
                               % (name, got, msgs))
        what = "sink got %d" % got if to == "sink" else \
            "Postfix primary delivered %d to discard(8)" % got
        rows = [row(fl, name, "flush rate", "msg/s", "higher", msgs / (t1 - t0), msgs,
                    "%.1f s from the primary's start to an empty queue; %s"
                    % (t1 - t0, what)),
                row(fl, name, "CPU per 1000 msgs", "CPU-s", "lower",
                    (c1 - c0) / msgs * 1000, msgs, "whole machine incl. the primary"),
                row(fl, name, "daemon CPU per 1000 msgs", "CPU-s", "lower",
                    own / msgs * 1000, msgs, "process tree %.1f CPU-s" % own)]
        log("  %-16s %-26s %7.0f msg/s  (%.1f s, %s)"
            % (name, fl, msgs / (t1 - t0), t1 - t0, what))
        return rows
    finally:
        prim.cleanup()


def primary_reference(msgs, size, sessions=20, timeout=600):
    """What the Postfix primary of the flush accepts from smtp-source with
    SESSIONS sessions straight into a fresh one, timed until it has
    accepted MSGS. A measure of that primary, not a limit: smtp-source
    opens a connection per message and does not pipeline, and a backup
    that keeps its connections and pipelines gets more through."""
    port = systems.free_port()
    prim = PostfixFinal(port)
    fl = "flush %d x %d B to a Postfix primary" % (msgs, size)
    name = "reference: smtp-source -s %d into the primary" % sessions
    try:
        prim.start()
        settle_disk()
        t0 = time.monotonic()
        rc, wall, _, out = run_timed(
            ["smtp-source", "-s", str(sessions), "-m", str(msgs), "-l", str(size),
             "-f", SENDER, "-t", RCPT, "127.0.0.1:%d" % port], timeout=timeout)
        if rc != 0:
            raise BenchFailure("%s: smtp-source exit %d: %s" % (name, rc, out[-500:]))
        wait_until(lambda: prim.accepted() >= msgs, 60, "primary accepted", 0.05)
        t1 = time.monotonic()
        log("  %-16s %-26s %7.0f msg/s" % ("primary alone", fl, msgs / (t1 - t0)))
        return [row(fl, name, "flush rate", "msg/s", "higher", msgs / (t1 - t0), msgs,
                    "%.1f s for smtp-source to get %d accepted" % (t1 - t0, msgs))]
    finally:
        prim.cleanup()


# --- the queue at scale: intake and bmxq with 0, 100k, 1M messages queued ------------

QFILL = os.path.join(ROOT, "build", "tests", "qfill")
# Recipients that fail are not due again for 30 minutes: the only scheduler
# work while a level is measured is the new mail's first attempt, the same
# at every level (mail taken in at an earlier level is not retried at once
# when the daemon starts at the next).
SCALE_QUEUE = "retry_min = 30m"


def level_name(n):
    if n >= 1000000 and n % 1000000 == 0:
        return "%dM" % (n // 1000000)
    if n >= 1000 and n % 1000 == 0:
        return "%dk" % (n // 1000)
    return str(n)


def as_nobody():
    pw = pwd.getpwnam("nobody")

    def fn():
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    return fn


def qfill(spool, n, body):
    """Adds N messages of BODY bytes to the stopped daemon's SPOOL with
    build/tests/qfill, as the user the daemon runs as. Checks the free
    space first (a million 400-byte messages take ~0.9 GB)."""
    if not os.path.exists(QFILL):
        raise BenchFailure("%s is not built (make)" % QFILL)
    st = os.statvfs(spool)
    avail = st.f_bavail * st.f_frsize
    need = n * (body + 1200) + (512 << 20)
    log("  df %s: %d MB free, %d MB needed for %d more messages"
        % (spool, avail >> 20, need >> 20, n))
    if avail < need:
        raise BenchFailure("queue scale: %d MB free on %s, %d MB needed"
                           % (avail >> 20, spool, need >> 20))
    rc, wall, _cpu, out = run_timed([QFILL, "-s", str(body), "-b", "2000", spool, str(n)],
                                    timeout=max(120, n / 2000), preexec_fn=as_nobody())
    if rc != 0:
        raise BenchFailure("qfill %d: exit %d: %s" % (n, rc, out[-500:]))
    log("  qfill: %d messages in %.1f s (%.0f msg/s)" % (n, wall, n / wall))
    return wall


def stats_count(text):
    m = re.search(r"^messages: (\d+)", text, re.M)
    return int(m.group(1)) if m else None


class QueueScale:
    """Issue 8's queue scale: intake into backupmx and `bmxq stats` (and
    `bmxq list | tail -1`) with LEVELS messages already queued. One spool is
    filled incrementally (qfill, daemon stopped) from level to level and the
    daemon started on it at each level, primary down; in every round of every
    level a fresh daemon on an empty spool runs the same intake first, so the
    "0 queued" reference is measured beside each level (A/B/A/B)."""

    def __init__(self, levels, rounds, intake, body, attempt):
        self.levels = levels
        self.rounds = rounds
        self.sessions, self.msgs, self.size = intake
        self.body = body
        self.attempt = attempt
        self.big = None
        self.filled = 0          # messages qfill put into the big spool
        self.extra = 0           # our own intake into the big spool so far
        self.start_rows = []     # the big daemon's start, shown with its level
        self.notes = []
        self.wl = "queue scale: intake -s %d -m %d -l %d" % intake

    def label(self, level):
        return "backupmx, %s queued" % level_name(level)

    def intake(self, s, level, expect):
        """One intake into the running S; `bmxq stats` after it, whose
        message count must be EXPECT."""
        name = self.label(level)
        root = s.root_pid()
        d0 = tree_cpu(root)
        rc, wall, _gen, out = run_timed(
            ["smtp-source", "-s", str(self.sessions), "-m", str(self.msgs),
             "-l", str(self.size), "-f", SENDER, "-t", RCPT, "127.0.0.1:%d" % s.port],
            timeout=600)
        own = tree_cpu(root) - d0
        if rc != 0:
            raise BenchFailure("%s: smtp-source exit %d: %s" % (name, rc, out[-500:]))
        rc, swall, _c, sout = run_timed([os.path.join(systems.BIN, "bmxq"), "-f", s.conf,
                                         "stats"], timeout=600)
        n = stats_count(sout)
        if rc != 0 or n is None:
            raise BenchFailure("%s: bmxq stats: exit %d: %s" % (name, rc, sout[-300:]))
        if n != expect:
            raise BenchFailure("%s: LOST MAIL: bmxq stats counts %d messages, %d expected"
                               % (name, n, expect))
        log("  %-24s intake %6.0f msg/s, daemon %.2f CPU-s/1000; bmxq stats %.2f s (%d queued)"
            % (name, self.msgs / wall, own / self.msgs * 1000, swall, n))
        return [row(self.wl, name, "accept rate", "msg/s", "higher", self.msgs / wall,
                    self.msgs, "%d queued after the run (bmxq stats)" % n),
                row(self.wl, name, "daemon CPU per 1000 msgs", "CPU-s", "lower",
                    own / self.msgs * 1000, self.msgs, "process tree %.1f CPU-s" % own),
                row("queue scale: bmxq stats", name, "wall time", "s", "lower", swall, n,
                    "%d messages counted" % n)]

    def empty_run(self):
        s = Backupmx(systems.free_port(), queue_extra=SCALE_QUEUE)
        try:
            t0 = time.monotonic()
            s.start()
            t_start = time.monotonic() - t0
            rows = self.intake(s, 0, self.msgs)
            rows.append(row("queue scale: daemon start", self.label(0),
                            "start to SMTP banner", "s", "lower", t_start, 0))
            return rows
        finally:
            s.cleanup()

    def list_tail(self, s, level, expect):
        name = self.label(level)
        cmd = "'%s' -f '%s' list | tail -1" % (os.path.join(systems.BIN, "bmxq"), s.conf)
        rc, wall, _c, out = run_timed(["sh", "-c", cmd], timeout=900)
        m = re.search(r"in (\d+) requests?", out)
        if rc != 0 or not m or int(m.group(1)) != expect:
            raise BenchFailure("%s: bmxq list | tail -1: %r (%d expected)"
                               % (name, out[-300:], expect))
        log("  %-24s bmxq list | tail -1: %.2f s" % (name, wall))
        return [row("queue scale: bmxq list piped to tail -1", name, "wall time", "s", "lower",
                    wall, expect, out.strip()[-80:])]

    def fill(self, level):
        """The big spool up to LEVEL prefilled messages (daemon stopped)."""
        if self.big is None:
            self.big = Backupmx(systems.free_port(), queue_extra=SCALE_QUEUE)
            # one clean start and stop: the spool is what a daemon that ran
            # and stopped leaves (no crash recovery scan at the next start)
            self.big.start()
            self.big.stop()
        self.big.stop()
        wall = qfill(self.big.spool, level - self.filled, self.body)
        self.notes.append("queue scale: qfill added %d messages (%d -> %d) in %.1f s"
                          % (level - self.filled, self.filled, level, wall))
        self.filled = level
        return []

    def start_big(self, level):
        t0 = time.monotonic()
        self.big.start(timeout=600)
        t = time.monotonic() - t0
        log("  %-24s daemon start to SMTP banner: %.2f s" % (self.label(level), t))
        self.start_rows = [row("queue scale: daemon start", self.label(level),
                               "start to SMTP banner", "s", "lower", t, level, "")]
        return []

    def big_run(self, level):
        self.extra += self.msgs
        rows = self.intake(self.big, level, level + self.extra)
        rows, self.start_rows = rows + self.start_rows, []
        return rows

    def run(self):
        try:
            filled = [lv for lv in self.levels if lv > 0]
            if not filled:       # only the empty queue asked for
                for r in range(self.rounds):
                    log("queue scale 0 queued, round %d/%d" % (r + 1, self.rounds))
                    self.attempt("queue scale 0 queued", self.empty_run)
            for level in filled:
                log("queue scale: filling to %s queued" % level_name(level))
                if not self.attempt("queue scale fill %s" % level_name(level),
                                    lambda: self.fill(level)):
                    return
                if not self.attempt("queue scale start %s" % level_name(level),
                                    lambda: self.start_big(level)):
                    return
                for r in range(self.rounds):
                    log("queue scale %s queued, round %d/%d"
                        % (level_name(level), r + 1, self.rounds))
                    self.attempt("queue scale 0 queued", self.empty_run)
                    if not self.attempt("queue scale %s queued" % level_name(level),
                                        lambda: self.big_run(level)):
                        return   # its queue's count is unknown from here on
                    if r == 0:
                        self.attempt("queue scale %s list" % level_name(level),
                                     lambda: self.list_tail(self.big, level,
                                                            level + self.extra))
                self.big.stop()
        finally:
            if self.big is not None:
                self.big.cleanup()


# --- 3: drain a Maildir out of Dovecot ----------------------------------------

PASSWORD = "bench-secret"


def message(i, size):
    """A 4 KB-ish message with CRLF line ends (as backupmx's catch-all
    stores them; Dovecot reads either)."""
    head = ("From: <sender%d@example.net>\r\nTo: <user@example.org>\r\n"
            "X-Original-To: user@example.org\r\nSubject: drain %d\r\n"
            "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
            "Message-ID: <drain-%d-%d@bench.test>\r\n\r\n" % (i, i, i, time.time_ns()))
    line = "x" * 74 + "\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return (head + body).encode()


def crypt_sha512(password):
    return subprocess.run(["openssl", "passwd", "-6", password], check=True,
                          capture_output=True, text=True).stdout.strip()


class DrainBench:
    """One Dovecot (plain POP3/IMAP on loopback) with a mailbox user per
    run, an SMTP sink and an LMTP sink shared by every client; and one
    backupmx whose catch-all mailboxes are the same Maildirs, so that the
    two servers can be compared on identical mail."""

    def __init__(self):
        self.users = ["u%d" % i for i in range(64)]
        self.next = 0
        self.dv = dovecot_mod.Dovecot({u: PASSWORD for u in self.users})
        self.smtp = Sink()
        self.lmtp = Sink(lmtp=True)
        self.tmp = tempfile.mkdtemp(prefix="bench-drain-", dir="/tmp")
        self.fetchd_bin = os.path.join(ROOT, "bin", "fetchd")
        self.bmx = None

    def start(self):
        self.dv.start()
        self.smtp.start()
        self.lmtp.start()
        self.start_backupmx()
        return self

    def start_backupmx(self):
        pop3, imap = dovecot_mod.harness.free_ports(2)
        hashed = crypt_sha512(PASSWORD)
        conf = ['domain "catchall.test" { mode = "catchall"  mailbox = "%s" }' % self.users[0]]
        conf += ['mailbox "%s" { password = "%s"  maildir = "%s" }'
                 % (u, hashed, self.dv.maildir(u)) for u in self.users]
        conf += ['pop3 { listen = { "127.0.0.1:%d" }  tls = "none" }' % pop3,
                 'imap { listen = { "127.0.0.1:%d" }  tls = "none" }' % imap]
        self.bmx = Backupmx(systems.free_port(), extra="\n".join(conf))
        self.bmx.pop3, self.bmx.imap = pop3, imap
        self.bmx.start()

    def stop(self):
        for x in (self.smtp, self.lmtp):
            x.cleanup()
        try:
            if self.bmx is not None:
                self.bmx.stop()
        finally:
            if self.bmx is not None:
                self.bmx.cleanup()   # its state directory too
            self.dv.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def ports(self, source):
        srv = self.dv if source == "dovecot" else self.bmx
        return srv.pop3, srv.imap

    def fill(self, n, size, source="dovecot"):
        user = self.users[self.next]
        self.next += 1
        base = self.dv.maildir(user)
        nobody = pwd.getpwnam("nobody")
        t = int(time.time())
        for i in range(n):
            data = message(i, size)
            name = "%d.M%dP%d.bench,S=%d,W=%d" % (t, i, os.getpid(), len(data), len(data))
            p = os.path.join(base, "new", name)
            with open(p, "wb") as f:
                f.write(data)
            os.chown(p, nobody.pw_uid, nobody.pw_gid)
        # let the server index the mailbox (UIDs) now, outside the timed run
        pop = poplib.POP3("127.0.0.1", self.ports(source)[0], timeout=120)
        pop.user(user)
        pop.pass_(PASSWORD)
        count = pop.stat()[0]
        pop.quit()
        if count != n:
            raise BenchFailure("%s shows %d of %d messages" % (source, count, n))
        return user

    # --- the clients ----------------------------------------------------------
    def run_client(self, client, proto, dest, n, size, source="dovecot"):
        dest, conc = split_dest(dest)
        user = self.fill(n, size, source)
        work = tempfile.mkdtemp(prefix="%s-%s-" % (client, proto), dir=self.tmp)
        counter = os.path.join(work, "mda.count")
        pop3, imap = self.ports(source)
        port = pop3 if proto == "pop3" else imap
        sink = {"smtp": self.smtp, "lmtp": self.lmtp}.get(dest)
        before = sink.count() if sink else 0
        if client == "fetchd":
            args, env = self.fetchd_args(work, user, proto, port, dest, counter, conc)
        elif client == "fetchmail":
            args, env = self.fetchmail_args(work, user, proto, port, dest, counter)
        else:
            args, env = self.getmail_args(work, user, proto, port, dest, counter)
        settle_disk()
        c0 = busy_cpu()
        rc, wall, own_cpu, out = run_timed(args, timeout=900, env=env, cwd=work,
                                           outfile=os.path.join(work, "out.log"))
        c1 = busy_cpu()
        name = "%s %s->%s from %s" % (client, proto, dest, source)
        if rc != 0:
            raise BenchFailure("%s: exit %d: %s" % (name, rc, out[-800:]))
        left = self.dv.count(user)
        if dest == "mda":
            with contextlib.suppress(OSError):
                with open(counter) as f:
                    got = len(f.read().splitlines())
        else:
            wait_until(lambda: sink.count() - before >= n, 10,
                       "%s: sink counting %d" % (name, n), 0.05)
            got = sink.count() - before
        if left != 0 or got != n:
            raise BenchFailure("%s: LOST OR KEPT MAIL: %d left in the Maildir, "
                               "%d of %d delivered" % (name, left, got, n))
        log("  %-26s %6d msgs %7.2f s %7.0f msg/s  (delivered %d, left %d)"
            % (name, n, wall, n / wall, got, left))
        return wall, c1 - c0, got, own_cpu

    def mda_alone(self, n, size):
        """The MDA command of the drain rows run N times one after the other
        by a shell loop, a message on its stdin each time, with no mailbox
        and no puller: the most any puller that runs one MDA at a time can
        deliver per second (wall, machine CPU, delivered, own CPU)."""
        work = tempfile.mkdtemp(prefix="mda-alone-", dir=self.tmp)
        counter = os.path.join(work, "mda.count")
        msg = os.path.join(work, "msg")
        with open(msg, "wb") as f:
            f.write(message(0, size))
        loop = ('i=0; while [ $i -lt %d ]; do /bin/sh -c "cat >/dev/null && echo >> %s" < %s; '
                'i=$((i+1)); done' % (n, counter, msg))
        settle_disk()
        c0 = busy_cpu()
        rc, wall, own_cpu, out = run_timed(["/bin/sh", "-c", loop], timeout=900, cwd=work)
        c1 = busy_cpu()
        with contextlib.suppress(OSError):
            with open(counter) as f:
                got = len(f.read().splitlines())
        if rc != 0 or got != n:
            raise BenchFailure("the MDA alone: exit %d, %d of %d runs counted: %s"
                               % (rc, got, n, out[-300:]))
        log("  %-26s %6d msgs %7.2f s %7.0f msg/s" % ("the MDA alone", n, wall, n / wall))
        return wall, c1 - c0, got, own_cpu

    def fetchd_args(self, work, user, proto, port, dest, counter, conc=1):
        deliver = {"smtp": "smtp:127.0.0.1:%d" % self.smtp.port,
                   "lmtp": "lmtp:127.0.0.1:%d" % self.lmtp.port,
                   "mda": "mda:/bin/sh -c 'cat >/dev/null && echo >> %s'" % counter}[dest]
        conf = os.path.join(work, "fetchd.conf")
        with open(conf, "w") as f:
            f.write('state = "%s/state"\n'
                    'account "bench" {\n'
                    '  server = "127.0.0.1"\n  protocol = "%s"\n  port = %d\n'
                    '  tls = "none"\n  user = "%s"\n  password = "%s"\n'
                    '  deliver = "%s"\n  envelope = "X-Original-To"\n'
                    '  localdomains = { "example.org" }\n  keep = false\n'
                    '  mda_concurrency = %d\n}\n'
                    % (work, proto, port, user, PASSWORD, deliver.replace('"', '\\"'), conc))
        os.chmod(conf, 0o600)
        return [self.fetchd_bin, "-1", "-f", conf], None

    def fetchmail_args(self, work, user, proto, port, dest, counter):
        rc = os.path.join(work, "fetchmailrc")
        if dest == "smtp":
            out = 'smtphost "127.0.0.1/%d" smtpname "user@example.org"' % self.smtp.port
        elif dest == "mda":
            out = 'mda "cat >/dev/null && echo >> %s"' % counter
        else:
            raise ValueError(dest)
        with open(rc, "w") as f:
            f.write('set no syslog\n'
                    'poll 127.0.0.1 service %d protocol %s no dns\n'
                    '  user "%s" password "%s" is root here\n'
                    "  options sslproto '' no keep fetchall %s\n"
                    % (port, "IMAP" if proto == "imap" else "POP3", user, PASSWORD, out))
        os.chmod(rc, 0o600)
        env = dict(os.environ, FETCHMAILHOME=work)
        return ["fetchmail", "-f", rc, "--pidfile", os.path.join(work, "fetchmail.pid"),
                "-N", "--nosyslog"], env

    def getmail_args(self, work, user, proto, port, dest, counter):
        rc = os.path.join(work, "getmailrc")
        retr = "SimpleIMAPRetriever" if proto == "imap" else "SimplePOP3Retriever"
        if dest == "lmtp":
            d = ("type = MDA_lmtp\nhost = 127.0.0.1\nport = %d\n"
                 "override = user@example.org\n" % self.lmtp.port)
        elif dest == "mda":
            d = ("type = MDA_external\npath = /bin/sh\n"
                 "arguments = ('-c', 'cat >/dev/null && echo >> %s')\n"
                 "allow_root_commands = true\n" % counter)
        else:
            raise ValueError(dest)
        with open(rc, "w") as f:
            f.write("[retriever]\ntype = %s\nserver = 127.0.0.1\nport = %d\n"
                    "username = %s\npassword = %s\n\n[destination]\n%s\n"
                    "[options]\ndelete = true\nread_all = true\nverbose = 0\n"
                    % (retr, port, user, PASSWORD, d))
        return ["getmail", "--getmaildir", work, "--rcfile", rc], None


# --- 4: the floor ----------------------------------------------------------------

def floor_once(directory, n, mib):
    exe = compile_c(os.path.join(ROOT, "bench", "fsyncbench.c"),
                    os.path.join(BUILD, "fsyncbench"))
    d = tempfile.mkdtemp(prefix="bench-floor-", dir=directory)
    try:
        rc, wall, _cpu, out = run_timed([exe, d, str(n), str(mib)], timeout=300)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if rc != 0:
        raise BenchFailure("fsyncbench: %s" % out)
    vals = dict(l.split("=") for l in out.split() if "=" in l)
    wl = "disk floor (%s)" % directory
    return [row(wl, "disk", "fdatasync (4 KiB appends)", "syncs/s", "higher",
                float(vals["fdatasync_per_s"]), n),
            row(wl, "disk", "create+4 KiB+fsync+close", "files/s", "higher",
                float(vals["create_fsync_per_s"]), n),
            row(wl, "disk", "sequential write + fsync", "MiB/s", "higher",
                float(vals["seqwrite_mib_per_s"]), mib)]


# --- 5: idle SMTP sessions ------------------------------------------------------------

def open_idle(port, n, tls=False):
    """Opens N sessions to 127.0.0.1:PORT, reads each banner (and with TLS
    does EHLO + STARTTLS); returns the sockets."""
    ctx = None
    if tls:
        import ssl as _ssl
        ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = _ssl.CERT_NONE
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # spread the client side over a few source addresses (ports)
        s.bind(("127.0.%d.%d" % (1 + i // 20000, 2 + (i // 5000) % 200), 0))
        s.settimeout(30)
        s.connect(("127.0.0.1", port))
        banner = s.recv(512)
        if not banner.startswith(b"220"):
            raise BenchFailure("idle session %d: banner %r" % (i, banner[:100]))
        if tls:
            s.sendall(b"EHLO idle.example.net\r\n")
            buf = b""
            while not buf.endswith(b"\r\n") or b"250 " not in buf:
                buf += s.recv(4096)
            s.sendall(b"STARTTLS\r\n")
            r = s.recv(512)
            if not r.startswith(b"220"):
                raise BenchFailure("STARTTLS refused: %r" % r)
            s = ctx.wrap_socket(s, server_hostname=systems.HOSTNAME)
        socks.append(s)
    return socks


def idle_once(kind, n, tls=False):
    raise_nofile(4 * n + 1000)
    dead = systems.free_port()
    if kind == "backupmx":
        extra = ""
        s = Backupmx(dead, conns=max(n + 100, 1000))
        if tls:
            import harness
            cert, key = harness.make_cert(s.state)
            with open(s.conf, "a") as f:
                f.write('tls { cert = "%s"  key = "%s" }\n' % (cert, key))
        del extra
    elif kind == "postfix":
        s = PostfixBackup(dead, extra_main_cf="default_process_limit = %d\n"
                          "smtpd_client_connection_count_limit = 0" % (n + 100))
    else:
        s = make_system(kind, dead)
    name = getattr(s, "label", kind) + (" (TLS)" if tls else "")
    socks = []
    try:
        s.start()
        time.sleep(1)
        _rss0, pss0 = mem_of(s.pids())
        t0 = time.monotonic()
        socks = open_idle(s.port, n, tls)
        t_open = time.monotonic() - t0
        time.sleep(2)
        pids = s.pids()
        rss, pss = mem_of(pids)
        alive = sum(1 for x in socks if x.fileno() >= 0)
        log("  %-22s %6d idle sessions: PSS %.1f MiB (idle %.1f MiB), RSS sum %.1f MiB, "
            "%d processes, opened in %.1f s"
            % (name, n, pss / 1024, pss0 / 1024, rss / 1024, len(pids), t_open))
        wl = "%d idle SMTP sessions%s" % (n, " (STARTTLS)" if tls else "")
        return [row(wl, name, "PSS total", "MiB", "lower", pss / 1024, n,
                    "idle %.1f MiB; RSS sum %.1f MiB; %d processes; opened in %.1f s"
                    % (pss0 / 1024, rss / 1024, len(pids), t_open)),
                row(wl, name, "PSS per session", "KiB", "lower", (pss - pss0) / max(alive, 1), n)]
    finally:
        for x in socks:
            with contextlib.suppress(OSError):
                x.close()
        s.cleanup()
