"""The workloads of issue 8. Each returns rows of measurements; every
round verifies that no mail was lost and raises BenchFailure otherwise.

A row is a dict: workload, system, metric, unit, better ("higher" or
"lower"), value, n (messages), extra (free text for the notes).
"""

import contextlib
import os
import poplib
import pwd
import shutil
import socket
import ssl  # noqa: F401  (kept for TLS idle sessions)
import subprocess
import sys
import tempfile
import time

from .common import (BUILD, ROOT, BenchFailure, busy_cpu, compile_c, log,
                     mem_of, raise_nofile, run_timed, tree_cpu, wait_until)
from . import systems
from .systems import SENDER, RCPT, Backupmx, OpenSMTPD, PostfixBackup, Sink

sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import dovecot as dovecot_mod  # noqa: E402


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
    raise ValueError(kind)


# --- 1 + 2: durable intake with the primary down, then the flush -------------------

def intake_once(kind, sessions, msgs, size, flush=False, timeout=600):
    """One intake run into a fresh KIND; with FLUSH, then the flush of the
    queue to smtp-sink. Returns rows."""
    wl = "intake -s %d -m %d -l %d" % (sessions, msgs, size)
    dead = systems.free_port()
    s = make_system(kind, dead)
    name = getattr(s, "label", kind)
    rows = []
    sink = None
    try:
        s.start()
        time.sleep(0.3)
        root = s.root_pid()
        d0 = tree_cpu(root)
        c0, t0 = busy_cpu(), time.monotonic()
        rc, wall, gen_cpu, out = run_timed(
            ["smtp-source", "-s", str(sessions), "-m", str(msgs), "-l", str(size),
             "-f", SENDER, "-t", RCPT, "127.0.0.1:%d" % s.port], timeout=timeout)
        if rc != 0:
            raise BenchFailure("%s: smtp-source exit %d: %s" % (name, rc, out[-500:]))
        # everything acknowledged must be in the queue; Postfix also has to
        # move it out of incoming/ (qmgr), part of its cost per message
        wait_until(lambda: s.live_count() >= msgs and s.settled(), 120,
                   "%s: %d messages in the queue" % (name, msgs), 0.1)
        c1, t1 = busy_cpu(), time.monotonic()
        own = tree_cpu(root) - d0
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
        else:
            stored = s.stored_count()
            how = "message dirs in queue/"
        if stored != msgs:
            raise BenchFailure("%s: LOST MAIL: %d of %d messages in the queue (%s)"
                               % (name, stored, msgs, how))
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
                time.sleep(0.5)
            sink = Sink(port=dead)
            root = s.root_pid()
            d0 = tree_cpu(root)
            c0, t0 = busy_cpu(), time.monotonic()
            sink.start()
            s.flush()
            wait_until(lambda: s.live_count() == 0, timeout,
                       "%s: empty queue after flush" % name, 0.1)
            t1, c1 = time.monotonic(), busy_cpu()
            own = tree_cpu(root) - d0
            wait_until(lambda: sink.count() >= msgs, 30,
                       "smtp-sink counting %d messages" % msgs, 0.1)
            got = sink.count()
            if got < msgs:
                raise BenchFailure("%s: LOST MAIL in flush: sink got %d of %d"
                                   % (name, got, msgs))
            fl = "flush %d x %d B to smtp-sink" % (msgs, size)
            rows.append(row(fl, name, "flush rate", "msg/s", "higher", msgs / (t1 - t0),
                            msgs, "%.1f s from sink start to empty queue; sink got %d"
                            % (t1 - t0, got)))
            rows.append(row(fl, name, "CPU per 1000 msgs", "CPU-s", "lower",
                            (c1 - c0) / msgs * 1000, msgs, "whole machine incl. sink"))
            rows.append(row(fl, name, "daemon CPU per 1000 msgs", "CPU-s", "lower",
                            own / msgs * 1000, msgs, "process tree %.1f CPU-s" % own))
            log("  %-16s %-26s %7.0f msg/s  (%.1f s, sink got %d)"
                % (name, fl, msgs / (t1 - t0), t1 - t0, got))
    finally:
        if sink:
            sink.cleanup()
        s.cleanup()
    return rows


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
        if self.bmx is not None:
            self.bmx.stop()
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
        user = self.fill(n, size, source)
        work = tempfile.mkdtemp(prefix="%s-%s-" % (client, proto), dir=self.tmp)
        counter = os.path.join(work, "mda.count")
        pop3, imap = self.ports(source)
        port = pop3 if proto == "pop3" else imap
        sink = {"smtp": self.smtp, "lmtp": self.lmtp}.get(dest)
        before = sink.count() if sink else 0
        if client == "fetchd":
            args, env = self.fetchd_args(work, user, proto, port, dest, counter)
        elif client == "fetchmail":
            args, env = self.fetchmail_args(work, user, proto, port, dest, counter)
        else:
            args, env = self.getmail_args(work, user, proto, port, dest, counter)
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

    def fetchd_args(self, work, user, proto, port, dest, counter):
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
                    '  localdomains = { "example.org" }\n  keep = false\n}\n'
                    % (work, proto, port, user, PASSWORD, deliver.replace('"', '\\"')))
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
