"""Integration test harness for backupmx: runs the real daemon on loopback.

Daemon      one backupmx process in its own temp dir (config, spool, log),
            on free high ports of 127.0.0.1 (and ::1 if asked).
SMTPClient  a raw-socket SMTP client for byte-exact exchanges; it keeps a
            transcript that failure messages print.
DaemonTestCase  a unittest.TestCase sharing one Daemon per class, checking
            after every test that the daemon is alive and printed no
            sanitizer report.

Nothing is left running: every Daemon and helper process is registered and
killed at exit (atexit), also when a test fails or the run is interrupted.

Paths of the binaries come from run.py (--bin, --build) or the environment
(BMX_BIN, BMX_BUILD), relative to the repository root.
"""

import atexit
import contextlib
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, os.environ.get("BMX_BIN", "bin"))
BUILD = os.path.join(ROOT, os.environ.get("BMX_BUILD", "build"))
KEEP = os.environ.get("BMX_KEEP") == "1"

HOSTNAME = "mx2.example.test"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

SANITIZER_RE = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:")
QID_RE = re.compile(rb"queued as ([0-9A-Z]{16})\b")


def configure(bin_dir, build_dir):
    """Called by run.py with the --bin / --build arguments."""
    global BIN, BUILD
    BIN = os.path.abspath(os.path.join(ROOT, bin_dir))
    BUILD = os.path.abspath(os.path.join(ROOT, build_dir))


def backupmx_path():
    return os.path.join(BIN, "backupmx")


def is_root():
    return os.geteuid() == 0


class DaemonError(AssertionError):
    """A failure of the daemon itself (start, stop, crash, sanitizer)."""


# --- process bookkeeping: nothing survives the test run -----------------

_live_daemons = set()
_live_procs = set()


def _cleanup_all():
    for p in list(_live_procs):
        with contextlib.suppress(Exception):
            if p.poll() is None:
                p.kill()
                p.wait(5)
    for d in list(_live_daemons):
        with contextlib.suppress(Exception):
            d.cleanup()


atexit.register(_cleanup_all)


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


def install_signal_handlers():
    """SIGTERM/SIGHUP become SystemExit so that atexit cleanup runs."""
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGHUP, _sigterm)


@contextlib.contextmanager
def managed_popen(*args, **kw):
    """subprocess.Popen that is always killed when the block ends."""
    p = subprocess.Popen(*args, **kw)
    _live_procs.add(p)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(Exception):
            p.wait(10)
        _live_procs.discard(p)


def as_ids_fn(ids):
    """A preexec_fn that switches to ids = (uid, gid), or None."""
    if not ids or not is_root() or tuple(ids) == (os.getuid(), os.getgid()):
        return None
    uid, gid = ids

    def fn():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    return fn


def run_tool(args, timeout=60, input=None, check=True, ids=None):
    """Runs a helper program; returns CompletedProcess (bytes). Fails on a
    sanitizer report in its output, and on non-zero exit when check.
    With IDS = (uid, gid) (and root), it runs as that user."""
    try:
        cp = subprocess.run(args, input=input, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=timeout,
                            preexec_fn=as_ids_fn(ids))
    except subprocess.TimeoutExpired as e:
        raise AssertionError("%s: timed out after %ss\nstdout: %r\nstderr: %r"
                             % (" ".join(args), timeout,
                                (e.stdout or b"")[-2000:],
                                (e.stderr or b"")[-2000:]))
    err = cp.stderr.decode("utf-8", "replace")
    if SANITIZER_RE.search(err):
        raise AssertionError("%s: sanitizer report:\n%s"
                             % (" ".join(args), err[-6000:]))
    if check and cp.returncode != 0:
        raise AssertionError("%s: exit %d\nstdout: %s\nstderr: %s"
                             % (" ".join(args), cp.returncode,
                                cp.stdout[-2000:].decode("utf-8", "replace"),
                                err[-2000:]))
    return cp


# --- ports ---------------------------------------------------------------

def free_ports(n=1, family=socket.AF_INET, host="127.0.0.1"):
    """N distinct free TCP ports (kept bound until all are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_both():
    """A port free on both 127.0.0.1 and ::1."""
    for _ in range(50):
        port = free_ports(1)[0]
        try:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.bind(("::1", port))
            s.close()
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")


def have_ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


# --- TLS material ----------------------------------------------------------

def make_cert(directory):
    """A self-signed certificate and key for mx2.example.test in DIRECTORY."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    run_tool(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
              "-subj", "/CN=" + HOSTNAME, "-days", "2",
              "-keyout", key, "-out", cert], timeout=60)
    return cert, key


def client_tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --- queue inspection (daemon must be stopped) ---------------------------

def qtool_path(build=None):
    return os.path.join(build or BUILD, "tests", "qtool")


def queue_count(build, spool, ids=None):
    """(messages, recipients) from `qtool SPOOL count`."""
    cp = run_tool([qtool_path(build), spool, "count"], ids=ids)
    out = cp.stdout.decode("utf-8", "replace")
    m = re.search(r"messages=(\d+)\s+recipients=(\d+)", out)
    if not m:
        raise AssertionError("qtool count: unexpected output %r" % out)
    return int(m.group(1)), int(m.group(2))


def queue_body(build, spool, qid, ids=None):
    """The stored message (bytes) from `qtool SPOOL body QID`."""
    return run_tool([qtool_path(build), spool, "body", qid], ids=ids).stdout


def split_received(stored):
    """Splits a stored message into (our Received header, the rest).
    The header is the first line plus its continuation lines."""
    if not stored.startswith(b"Received:"):
        raise AssertionError("stored message does not start with our "
                             "Received header: %r" % stored[:200])
    pos = 0
    while True:
        nl = stored.find(b"\n", pos)
        if nl < 0:
            raise AssertionError("stored message has only a header: %r"
                                 % stored[:300])
        pos = nl + 1
        if stored[pos:pos + 1] not in (b" ", b"\t"):
            break
    return stored[:pos], stored[pos:]


# --- wire helpers ------------------------------------------------------------

def dot_stuff(msg):
    """Message bytes (CRLF lines) -> DATA payload including the final dot."""
    if not msg.endswith(b"\r\n"):
        msg += b"\r\n"
    lines = msg.split(b"\r\n")[:-1]
    out = b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n"
                   for l in lines)
    return out + b".\r\n"


def make_message(subject="test", body=b"Hello.\r\n", extra_headers=b""):
    if isinstance(body, str):
        body = body.encode()
    return (b"From: <a@b.test>\r\nTo: <user@example.test>\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Message-ID: <" + str(time.time()).encode() + b"@b.test>\r\n"
            + extra_headers + b"\r\n" + body)


class Reply:
    """One SMTP reply: code (int), lines (text after 'NNN-'/'NNN '), raw."""

    def __init__(self, raw_lines):
        self.raw = b"".join(raw_lines)
        self.lines = []
        for l in raw_lines:
            self.lines.append(l[4:].rstrip(b"\r\n").decode("utf-8", "replace"))
        self.code = int(raw_lines[-1][:3])
        self.full = [l.rstrip(b"\r\n").decode("utf-8", "replace")
                     for l in raw_lines]

    @property
    def enh(self):
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", self.lines[0])
        return m.group(1) if m else None

    @property
    def text(self):
        return "\n".join(self.full)

    def qid(self):
        m = QID_RE.search(self.raw)
        return m.group(1).decode() if m else None

    def __repr__(self):
        return "Reply(%r)" % self.raw


class ConnectionClosed(AssertionError):
    pass


class SMTPClient:
    """Raw SMTP over a socket. Every byte sent/received is in transcript."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0, source=None):
        self.timeout = timeout
        self.transcript = []
        self.buf = b""
        self.tls = False
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))

    # transcript
    def note(self, direction, data):
        self.transcript.append((direction, data))

    def format_transcript(self, last=40):
        out = []
        for d, data in self.transcript[-last:]:
            if len(data) > 600:
                data = data[:300] + b"...(%d bytes)..." % len(data) + data[-200:]
            out.append("%s %r" % (d, data))
        return "\n".join(out)

    def fail(self, msg):
        raise AssertionError("%s\n--- transcript (C: sent, S: received) ---\n%s"
                             % (msg, self.format_transcript()))

    # I/O
    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.note("C:", data)
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.fail("send failed: %s" % e)

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            self.fail("timeout (%.1fs) waiting for the server" % timeout)
        except OSError as e:
            self.fail("recv failed: %s" % e)
        if not chunk:
            raise ConnectionClosed(
                "connection closed by server (pending %r)\n--- transcript ---\n%s"
                % (self.buf, self.format_transcript()))
        self.note("S:", chunk)
        self.buf += chunk

    def readline(self, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail("timeout (%.1fs) waiting for a reply line" % timeout)
            self._fill(left)
        i = self.buf.index(b"\n") + 1
        line, self.buf = self.buf[:i], self.buf[i:]
        if not line.endswith(b"\r\n"):
            self.fail("reply line not terminated by CRLF: %r" % line)
        if len(line) < 5 or not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r"):
            self.fail("malformed reply line: %r" % line)
        return line

    def reply(self, timeout=None):
        """Reads one full (possibly multi-line) reply."""
        lines = [self.readline(timeout)]
        while lines[-1][3:4] == b"-":
            lines.append(self.readline(timeout))
            if lines[-1][:3] != lines[0][:3]:
                self.fail("reply code changed inside a multi-line reply")
        return Reply(lines)

    def cmd(self, line, timeout=None):
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def expect(self, reply, code, enh=None, *words):
        """Fails (with the transcript) unless REPLY has CODE, enhanced code
        ENH and contains every one of WORDS (case-insensitive)."""
        ok = reply.code == code and (enh is None or reply.enh == enh)
        low = reply.text.lower()
        ok = ok and all(w.lower() in low for w in words)
        if not ok:
            self.fail("expected %s%s%s, got %r"
                      % (code, " " + enh if enh else "",
                         (" with " + repr(words)) if words else "", reply.text))
        return reply

    def check(self, line, code, enh=None, *words, timeout=None):
        return self.expect(self.cmd(line, timeout), code, enh, *words)

    def banner(self):
        return self.expect(self.reply(), 220, None, HOSTNAME)

    def ehlo(self, name="client.example.test"):
        return self.check("EHLO " + name, 250)

    def helo(self, name="client.example.test"):
        return self.check("HELO " + name, 250)

    def starttls(self, ctx=None):
        self.check("STARTTLS", 220, "2.0.0")
        if self.buf:
            self.fail("plaintext data after the STARTTLS reply: %r" % self.buf)
        self.tls_handshake(ctx)

    def tls_handshake(self, ctx=None):
        ctx = ctx or client_tls_context()
        self.sock.settimeout(self.timeout)
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=HOSTNAME)
        except (ssl.SSLError, OSError) as e:
            self.fail("TLS handshake failed: %s" % e)
        self.tls = True
        self.note("--", b"TLS established: %r" % (self.sock.cipher(),))

    def read_until_close(self, timeout=None):
        """Everything the server sends until it closes the connection."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        data, self.buf = self.buf, b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail("server did not close the connection within %.1fs"
                          % timeout)
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, ssl.SSLError):
                return data
            if not chunk:
                return data
            self.note("S:", chunk)
            data += chunk

    def assert_closed(self, timeout=None):
        rest = self.read_until_close(timeout)
        if rest:
            self.fail("unexpected data before close: %r" % rest)

    def quiet(self, wait=0.3):
        """Asserts the server sends nothing more for WAIT seconds."""
        if self.buf:
            self.fail("unexpected extra data from server: %r" % self.buf)
        r, _, _ = select.select([self.sock], [], [], wait)
        if r:
            self.sock.settimeout(1)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                return
            self.note("S:", chunk)
            self.buf += chunk
            if chunk:
                self.fail("unexpected extra data from server: %r" % chunk)

    def quit(self):
        with contextlib.suppress(AssertionError, OSError):
            self.check("QUIT", 221, "2.0.0")
            self.read_until_close(5)
        self.close()

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # a whole transaction
    def send_mail(self, sender="a@b.test", rcpts=("user@example.test",),
                  msg=None, mail_params=""):
        """MAIL, RCPT..., DATA, message; returns the queue id."""
        self.check("MAIL FROM:<%s>%s" % (sender, mail_params), 250, "2.1.0")
        for r in rcpts:
            self.check("RCPT TO:<%s>" % r, 250, "2.1.5")
        self.check("DATA", 354)
        self.send(dot_stuff(msg if msg is not None else make_message()))
        rep = self.expect(self.reply(), 250, "2.0.0", "queued as")
        qid = rep.qid()
        if not qid:
            self.fail("no 16-char queue id in %r" % rep.text)
        return qid


# --- the daemon ------------------------------------------------------------

DEFAULT_LIMITS = dict(message_size="1M", recipients=5, connections=50,
                      connections_per_ip=10, command_timeout="3s",
                      data_timeout="5s", errors=5)

DEFAULT_RCPT_LIST = """# valid recipients of listed.test
alice@listed.test
# bob@listed.test
Dave@Listed.Test
"""

# @PORT@ @PORT6@ @TMP@ @SPOOL@ @LISTEN@ @LIMITS@ @TLS@ @USER@ @EXTRA@ are
# replaced (libconfuse uses braces, so no str.format).
DEFAULT_TEMPLATE = """# backupmx integration test config (generated)
hostname = "mx2.example.test"
spool = "@SPOOL@"
@USER@
listen = { @LISTEN@ }
limits { @LIMITS@ }
@TLS@
domain "example.test" { mode = "relay"  primary = { "127.0.0.1:1" } }
domain "listed.test"  { mode = "relay"  primary = { "127.0.0.1:1" }  recipients = "@TMP@/listed.rcpt" }
domain "sub.test"     { mode = "relay"  subdomains = true  primary = { "127.0.0.1:1" } }
@EXTRA@
"""


class Daemon:
    """One backupmx process with its own temp dir, config, spool and log."""

    def __init__(self, template=DEFAULT_TEMPLATE, limits=None, tls=False,
                 extra="", user=None, ipv6=False, files=None):
        self.tmp = tempfile.mkdtemp(prefix="bmx-test-", dir="/tmp")
        _live_daemons.add(self)
        self.spool = os.path.join(self.tmp, "spool")
        # Started as root, the daemon runs its sessions as an unprivileged
        # user (the configured one; "nobody" when none is configured), which
        # must reach its files: a readable temp dir and a spool it owns
        # (what a package would create for it).
        os.chmod(self.tmp, 0o755)
        if is_root():
            import pwd
            pw = pwd.getpwnam(user or "nobody")
            os.mkdir(self.spool, 0o700)
            os.chown(self.spool, pw.pw_uid, pw.pw_gid)
        self.run_ids = None     # (uid, gid) the daemon ran as; qtool uses them
        self.conf = os.path.join(self.tmp, "backupmx.conf")
        self.logfile = os.path.join(self.tmp, "daemon.log")
        self.proc = None
        self.pid = None
        self.user = user
        self.ipv6 = ipv6
        self.starts = 0
        self._health_mark = 0
        if ipv6:
            self.port = free_port_both()
        else:
            self.port = free_ports(1)[0]
        lim = dict(DEFAULT_LIMITS)
        lim.update(limits or {})
        listen = ['"127.0.0.1:%d"' % self.port]
        if ipv6:
            listen.append('"[::1]:%d"' % self.port)
        tls_conf = ""
        if tls:
            self.cert, self.key = make_cert(self.tmp)
            tls_conf = 'tls { cert = "%s"  key = "%s" }' % (self.cert, self.key)
        files = dict(files or {})
        files.setdefault("listed.rcpt", DEFAULT_RCPT_LIST)
        for name, content in files.items():
            self.write_file(name, content)
        text = template
        for k, v in (("@LISTEN@", ", ".join(listen)),
                     ("@LIMITS@", "  ".join("%s = %s" % kv for kv in lim.items())),
                     ("@TLS@", tls_conf),
                     ("@USER@", 'user = "%s"' % user if user else ""),
                     ("@EXTRA@", extra),
                     ("@PORT@", str(self.port)),
                     ("@SPOOL@", self.spool),
                     ("@TMP@", self.tmp)):
            text = text.replace(k, v)
        self.write_file("backupmx.conf", text)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write_file(self, name, content, mtime_bump=False):
        """Writes TMP/NAME; with mtime_bump the mtime is moved 2 s past the
        old one so that a change is visible at one-second resolution."""
        p = self.path(name)
        old = os.stat(p).st_mtime if os.path.exists(p) else None
        with open(p, "w" if isinstance(content, str) else "wb") as f:
            f.write(content)
        if mtime_bump and old is not None:
            t = max(old + 2, time.time())
            os.utime(p, (t, t))
        return p

    # lifecycle
    def start(self):
        if self.running():
            raise DaemonError("start(): already running")
        env = dict(os.environ)
        self._start_mark = self._log_size()
        log = open(self.logfile, "ab")
        log.write(b"=== harness: start #%d ===\n" % (self.starts + 1))
        log.flush()
        try:
            self.proc = subprocess.Popen(
                [backupmx_path(), "-d", "-f", self.conf],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=self.tmp)
        finally:
            log.close()
        self.pid = self.proc.pid
        self.starts += 1
        self._wait_ready()
        ids = self.status_ids()
        self.run_ids = (ids["Uid"][1], ids["Gid"][1])

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                raise DaemonError("daemon exited with %s during start-up\n%s"
                                  % (rc, self.log_tail()))
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            except OSError as e:
                last = e
                time.sleep(0.05)
                continue
            try:
                s.settimeout(max(0.5, deadline - time.monotonic()))
                data = b""
                while b"\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(b"220"):
                    # leave cleanly so the session is gone before tests start
                    with contextlib.suppress(OSError):
                        s.sendall(b"QUIT\r\n")
                        while s.recv(4096):
                            pass
                    return
                last = "banner %r" % data
            except OSError as e:
                last = e
            finally:
                s.close()
            time.sleep(0.05)
        self.kill9()
        raise DaemonError("no 220 banner within %ss (last: %s)\n%s"
                          % (START_TIMEOUT, last, self.log_tail()))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM; fails unless it exits 0 within STOP_TIMEOUT with no
        sanitizer report."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        problems = []
        external = self._external_signal_note()   # before we signal it
        if proc.poll() is not None:
            problems.append("daemon was already dead (exit %s) before stop()"
                            % proc.returncode)
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                problems.append("daemon did not exit within %ss of SIGTERM "
                                "(needed SIGKILL)" % STOP_TIMEOUT)
            else:
                if proc.returncode != 0:
                    problems.append("daemon exited %s after SIGTERM (want 0)"
                                    % proc.returncode)
        reports = self.sanitizer_reports(self._health_mark)
        self._health_mark = self._log_size()
        if reports:
            problems.append("sanitizer report in daemon log:\n" + reports)
        if problems:
            raise DaemonError("\n".join(problems) + external + "\n" +
                              self.log_tail())

    def kill9(self):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)

    def restart(self):
        self.stop()
        self.start()

    @contextlib.contextmanager
    def stopped(self):
        """Stops the daemon (checked), runs the block, starts it again."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def cleanup(self):
        self.kill9()
        _live_daemons.discard(self)
        if KEEP:
            return
        shutil.rmtree(self.tmp, ignore_errors=True)

    # inspection
    def _log_size(self):
        try:
            return os.path.getsize(self.logfile)
        except OSError:
            return 0

    def log_mark(self):
        """An offset for log(since=...): only what is logged after now."""
        return self._log_size()

    def log(self, since=0):
        try:
            with open(self.logfile, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=40):
        lines = self.log().splitlines()
        return "--- daemon log (%s), last %d lines ---\n%s" % (
            self.logfile, n, "\n".join(lines[-n:]))

    def sanitizer_reports(self, since=0):
        text = self.log(since)
        m = SANITIZER_RE.search(text)
        if not m:
            return ""
        start = text.rfind("\n", 0, max(0, m.start() - 200)) + 1
        return text[start:start + 8000]

    def wait_log(self, pattern, timeout=5.0, since=0):
        """Waits for a regex to appear in the log; returns the match."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log(since))
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError("log line matching %r not found within %ss\n%s"
                                     % (pattern, timeout, self.log_tail()))
            time.sleep(0.05)

    def _external_signal_note(self):
        """The harness sent no signal: say so if the daemon logged one."""
        m = re.search(r"signal (\d+)", self.log(getattr(self, "_start_mark", 0)))
        if m:
            return (" -- it logged 'signal %s' that the harness did not send: "
                    "another process on this machine signalled it (pkill?)"
                    % m.group(1))
        return ""

    def check_health(self):
        """Fails if the daemon died or printed a sanitizer report since the
        last check; restarts a dead daemon so the next test can run."""
        problems = []
        reports = self.sanitizer_reports(self._health_mark)
        if reports:
            problems.append("sanitizer report in daemon log:\n" + reports)
        if self.proc is not None and self.proc.poll() is not None:
            problems.append("daemon died (exit %s)%s" % (
                self.proc.returncode, self._external_signal_note()))
            self.proc = None
        tail = self.log_tail() if problems else ""
        self._health_mark = self._log_size()
        if self.proc is None:
            with contextlib.suppress(Exception):
                self.start()
        if problems:
            raise DaemonError("\n".join(problems) + "\n" + tail)

    def status_ids(self):
        """{'Uid': [...], 'Gid': [...]} from /proc/PID/status."""
        out = {}
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Uid", "Gid"):
                    out[k] = [int(x) for x in v.split()]
        return out

    # clients and queue
    def connect(self, host="127.0.0.1", timeout=10.0, source=None,
                banner=True):
        c = SMTPClient(self.port, host=host, timeout=timeout, source=source)
        if banner:
            c.banner()
        return c

    def queue_count(self):
        if self.running():
            raise DaemonError("queue_count() while the daemon runs")
        return queue_count(BUILD, self.spool, ids=self.run_ids)

    def queue_body(self, qid):
        if self.running():
            raise DaemonError("queue_body() while the daemon runs")
        return queue_body(BUILD, self.spool, qid, ids=self.run_ids)


class DaemonTestCase(unittest.TestCase):
    """One shared Daemon per class (DAEMON_ARGS are Daemon(**kwargs)).
    After every test: daemon alive and no sanitizer report, else the test
    fails (and the daemon is restarted for the next one)."""

    DAEMON_ARGS = {}
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(**cls.DAEMON_ARGS)
        cls.addClassCleanup(cls.daemon.cleanup)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def tearDown(self):
        self.daemon.check_health()

    # helpers
    def connect(self, **kw):
        c = self.daemon.connect(**kw)
        self.addCleanup(c.close)
        return c

    def session(self, ehlo=True, **kw):
        c = self.connect(**kw)
        if ehlo:
            c.ehlo()
        return c

    def queue_count(self):
        """(messages, recipients); stops and restarts the shared daemon."""
        with self.daemon.stopped():
            return self.daemon.queue_count()

    def queue_bodies(self, qids):
        with self.daemon.stopped():
            return {q: self.daemon.queue_body(q) for q in qids}


# --- helpers added with test_redelivery.py ---------------------------------

def wait_until(pred, timeout, what="condition", interval=0.05, detail=None):
    """Polls PRED() until it returns a true value, which is returned; after
    TIMEOUT seconds an AssertionError names WHAT (and adds DETAIL(), a
    callable, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            extra = ""
            if detail is not None:
                with contextlib.suppress(Exception):
                    extra = "\n" + str(detail())
            raise AssertionError("%s: not reached within %ss%s"
                                 % (what, timeout, extra))
        time.sleep(interval)


def queue_list(build, spool, ids=None):
    """{qid: (sender, [(state, address), ...])} from `qtool SPOOL list`
    (the daemon must be stopped)."""
    out = run_tool([qtool_path(build), spool, "list"], ids=ids).stdout
    res = {}
    cur = None
    for line in out.decode("utf-8", "replace").splitlines():
        m = re.match(r"^([0-9A-Z]{16}) \d+ <([^>]*)> \d+$", line)
        if m:
            cur = []
            res[m.group(1)] = (m.group(2), cur)
            continue
        m = re.match(r"^\s+(\S+) <([^>]*)>$", line)
        if m and cur is not None:
            cur.append((m.group(1), m.group(2)))
            continue
        if line.strip():
            raise AssertionError("qtool list: unexpected line %r" % line)
    return res


def send_messages(port, items, sessions=4, host="127.0.0.1"):
    """Sends ITEMS, each a dict(sender=, rcpts=, msg=, mail_params=) for
    SMTPClient.send_mail, over SESSIONS parallel SMTP sessions (several
    transactions per session). Returns the queue ids in ITEMS' order."""
    import threading
    qids = [None] * len(items)
    errors = []

    def worker(k):
        try:
            c = SMTPClient(port, host=host, timeout=30)
            try:
                c.banner()
                c.ehlo()
                for i in range(k, len(items), sessions):
                    qids[i] = c.send_mail(**items[i])
                c.quit()
            finally:
                c.close()
        except BaseException as e:      # reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(min(sessions, len(items)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return qids
