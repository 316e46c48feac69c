"""Crash safety (issue 9, item 1): a ledger test.

Clients send messages with unique Message-IDs to a relay domain whose
primary is a sink this test controls, and write down which ones got the
250. The daemon is killed with SIGKILL at random moments, alternately

  intake      while several sessions are sending (pipelined MAIL/RCPT/DATA,
              so a kill lands in every state of a transaction), the primary
              refusing at the greeting (421) so that nothing is delivered;
  redelivery  while the queue drains to the primary (it answers again), a
              random number of deliveries after the first one;

and restarted (recovery) after each kill. At the end the primary stays up
until the queue has drained (bounded wait) and the ledger is settled:

  lost        acknowledged (250) but never at the primary: must be 0;
  corrupt     at the primary, but not byte for byte what was sent (after our
              Received: header): must be 0; also messages whose DATA never
              ended, or that nobody sent, turning up;
  duplicated  extra copies at the primary: at most the messages that were in
              flight at the kills. A message is in flight from the moment
              the primary has it (its 250 to our DATA) until the daemon has
              written its result to the log file (at the commit, before the
              next message goes; the fdatasync comes later, and only a power
              loss needs it); one connection carries one message at a time,
              so at a kill at most one per connection to the primary is in
              flight (the bound allows two), and there are at most
              queue.concurrency connections. A kill while the primary
              refuses at the greeting has none. The bound is the sum over
              the kills.
              RFC 5321 6.1: duplicates are preferred over loss, but only
              those the protocol cannot avoid.

The queue must be empty at the end, and the daemon's log free of sanitizer
reports (clean stop at the end, exit 0).

Default (make check): 10 kills, 300 messages, about 10 s (a recipient
the scheduler had pulled into memory carries a 60 s lease; the start
after a kill lifts it, so the final drain does not wait it out). BMX_LONG=1: 200 kills, 50,000 messages (about 15 minutes).
BMX_CRASH_KILLS, BMX_CRASH_MESSAGES and BMX_CRASH_SEED override; the seed
is printed so that a failure can be replayed (the kill moments themselves
depend on timing).

The primary is primary.py's SinkPrimary when that module is there, else a
small sink of our own; either way this test consumes its transactions as
they come (hash and forget), so memory does not grow with the message count.
"""

import base64
import collections
import hashlib
import os
import random
import socketserver
import threading
import time
import unittest

import harness
from harness import SMTPClient, dot_stuff, split_received

try:
    from primary import SinkPrimary
except ImportError:          # primary.py not there (yet): our own sink
    SinkPrimary = None

LONG = os.environ.get("BMX_LONG") == "1"
KILLS = int(os.environ.get("BMX_CRASH_KILLS", "200" if LONG else "10"))
MESSAGES = int(os.environ.get("BMX_CRASH_MESSAGES", "50000" if LONG else "300"))
SEED = int(os.environ.get("BMX_CRASH_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)

CONCURRENCY = 4              # queue.concurrency: connections to the primary
SENDERS = 4                  # parallel client sessions
DOMAIN = "crash.test"
RCPT = "ledger@" + DOMAIN
LEASE = 60                   # scheduler.c: a recipient pulled into memory is
                             # hidden this long; after a crash it waits it out
STALL_LIMIT = LEASE + 30     # final drain: seconds without any delivery
DRAIN_CAP = 900 if LONG else 240   # final drain: seconds in all
FIRST_DELIVERY_LIMIT = 20    # seconds to wait for redelivery to start
QUIET = 2                    # seconds without a delivery: the flow has ended

GREETING_UP = "220 sink.crash.test ESMTP"
GREETING_DOWN = "421 4.3.2 sink.crash.test down for the ledger test"

TEMPLATE = """# backupmx crash-ledger test config (generated)
hostname = "%s"
spool = "@SPOOL@"
@USER@
listen = { @LISTEN@ }
limits { @LIMITS@ }
queue { retry_min = 1s  retry_max = 2s  lifetime = 1d  concurrency = %d }
domain "%s" { mode = "relay"  primary = { "127.0.0.1:@SINKPORT@" } }
"""


def note(msg):
    """A TAP comment line (run.py prints TAP on stdout)."""
    print("# " + msg, flush=True)


# --- the messages --------------------------------------------------------------

SPECIAL = [b".", b"..", b".leading dot", b"..two dots", b"From the start",
           b"trailing blanks   ", b"", b" leading space", b"\ttab", b"-- ",
           b"x" * 998, b"=?not-encoded?="]


def make_message(run, i):
    """Message I of run RUN (bytes, CRLF lines): deterministic, so the
    ledger keeps only its hash. Sizes from 300 B to 300 KB (bodies over
    128 KB are stored in spool files, not inline)."""
    rng = random.Random("%s-%d" % (run, i))
    r = rng.random()
    if r < 0.60:
        target = rng.randint(300, 1500)
    elif r < 0.90:
        target = rng.randint(2000, 20000)
    elif r < 0.98:
        target = rng.randint(20000, 100000)
    else:
        target = rng.randint(130000, 300000)
    mid = "<crash-%s-%06d@ledger.test>" % (run, i)
    hdr = (b"From: Ledger <sender@client.test>\r\n"
           b"To: <" + RCPT.encode() + b">\r\n"
           b"Subject: ledger " + str(i).encode() + b"\r\n"
           b"Message-ID: " + mid.encode() + b"\r\n"
           b"X-Folded: first,\r\n\tsecond\r\n\r\n")
    lines = []
    size = len(hdr)
    while size < target:
        if rng.random() < 0.15:
            line = rng.choice(SPECIAL)
        else:
            line = base64.b64encode(rng.randbytes(rng.randint(0, 57)))
        lines.append(line)
        size += len(line) + 2
    lines.append(b"end of " + mid.encode())
    return hdr + b"\r\n".join(lines) + b"\r\n"


def msgid_of(data):
    """The ledger index in a delivered message, or None."""
    k = data.find(b"\r\nMessage-ID: <crash-")
    if k < 0:
        return None
    end = data.find(b"\r\n", k + 2)
    mid = data[k + 2 + len(b"Message-ID: "):end].decode("ascii", "replace")
    return mid


# --- a sink of our own, when primary.py is not there ---------------------------

class _Tx:
    def __init__(self, sender):
        self.sender = sender
        self.rcpts = []
        self.data = None


class _OwnSink(socketserver.ThreadingTCPServer):
    """The parts of primary.SinkPrimary this test uses: set_greeting(),
    lock, transactions (with .data, .rcpts), commands, open, stop()."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, port, greeting=GREETING_UP):
        self.lock = threading.Lock()
        self.greeting = greeting
        self.transactions = []
        self.commands = []
        self.open = 0
        super().__init__(("127.0.0.1", port), _OwnSinkHandler)
        self.thread = threading.Thread(target=self.serve_forever,
                                       kwargs=dict(poll_interval=0.05), daemon=True)
        self.thread.start()

    def set_greeting(self, g):
        with self.lock:
            self.greeting = g

    def stop(self):
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class _OwnSinkHandler(socketserver.StreamRequestHandler):
    timeout = 30

    def w(self, line):
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        srv = self.server
        with srv.lock:
            srv.open += 1
            greeting = srv.greeting
        try:
            self.w(greeting)
            if not greeting.startswith("220"):
                return
            tx = None
            while True:
                line = self.rfile.readline(4096)
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    self.w("250-sink.crash.test")
                    self.w("250-PIPELINING")
                    self.w("250 8BITMIME")
                elif verb == b"MAIL":
                    tx = _Tx(line)
                    self.w("250 2.1.0 Ok")
                elif verb == b"RCPT" and tx is not None:
                    tx.rcpts.append(line[8:].strip(b"<> \r\n").decode())
                    self.w("250 2.1.5 Ok")
                elif verb == b"DATA" and tx is not None and tx.rcpts:
                    self.w("354 go ahead")
                    chunks = []
                    while True:
                        l = self.rfile.readline()
                        if not l:
                            return
                        if l == b".\r\n":
                            break
                        chunks.append(l[1:] if l.startswith(b".") else l)
                    tx.data = b"".join(chunks)
                    with srv.lock:
                        srv.transactions.append(tx)
                    self.w("250 2.0.0 Ok: queued")
                    tx = None
                elif verb == b"RSET":
                    tx = None
                    self.w("250 2.0.0 Ok")
                elif verb == b"QUIT":
                    self.w("221 2.0.0 Bye")
                    return
                else:
                    self.w("502 5.5.2 no")
        except OSError:
            return
        finally:
            with srv.lock:
                srv.open -= 1


def make_sink(port):
    if SinkPrimary is not None:
        return SinkPrimary(port, greeting=GREETING_UP)
    return _OwnSink(port)


# --- the ledger ----------------------------------------------------------------

# What the client knows about message I.
UNSENT = 0        # not yet sent, or its DATA never ended: may be sent again
UNKNOWN = 1       # its final "." went out, no reply came (killed): either way
ACKED = 2         # the daemon said 250: it must arrive


class Ledger:
    def __init__(self, run, n):
        self.run = run
        self.n = n
        self.lock = threading.Lock()
        self.state = [UNSENT] * n
        self.digest = [None] * n
        self.delivered = collections.Counter()     # index -> copies
        self.corrupt = []                          # (index or mid, why)
        self.strangers = []                        # Message-IDs not ours
        self.attempted_unsent = []                 # delivered, never sent whole
        self.pool = collections.deque(range(n))    # to send
        self.mid_index = {}
        self.round = 0                             # kills so far
        self.first_round = {}                      # index -> round of 1st copy

    def mid(self, i):
        return "<crash-%s-%06d@ledger.test>" % (self.run, i)

    def message(self, i):
        msg = make_message(self.run, i)
        with self.lock:
            if self.digest[i] is None:
                self.digest[i] = hashlib.sha256(msg).digest()
                self.mid_index[self.mid(i)] = i
        return msg

    def take(self):
        with self.lock:
            return self.pool.popleft() if self.pool else None

    def give_back(self, i):
        with self.lock:
            self.pool.appendleft(i)

    def mark(self, i, st):
        with self.lock:
            self.state[i] = st

    def count(self, st):
        with self.lock:
            return sum(1 for s in self.state if s == st)

    def collect(self, sink):
        """Moves the sink's new transactions into the ledger (hash and
        forget). Returns how many messages arrived."""
        with sink.lock:
            txs = list(sink.transactions)
            del sink.transactions[:]
            del sink.commands[:]
        got = 0
        for tx in txs:
            if tx.data is None:
                continue
            got += 1
            mid = msgid_of(tx.data)
            with self.lock:
                i = self.mid_index.get(mid)
            if i is None:
                self.strangers.append(mid or repr(tx.data[:200]))
                continue
            self.delivered[i] += 1
            self.first_round.setdefault(i, self.round)
            if [r.lower() for r in tx.rcpts] != [RCPT]:
                self.corrupt.append((i, "recipients %r" % tx.rcpts))
            try:
                _, rest = split_received(tx.data)
            except AssertionError as e:
                self.corrupt.append((i, str(e)[:200]))
                continue
            if hashlib.sha256(rest).digest() != self.digest[i]:
                self.corrupt.append((i, "body differs (%d octets delivered)"
                                     % len(rest)))
            with self.lock:
                if self.state[i] == UNSENT:
                    self.attempted_unsent.append(i)
        return got

    def pending(self):
        """Messages the daemon may hold that have not arrived yet."""
        with self.lock:
            return sum(1 for i, s in enumerate(self.state)
                       if s != UNSENT and self.delivered[i] == 0)

    def missing_acked(self):
        with self.lock:
            return [i for i, s in enumerate(self.state)
                    if s == ACKED and self.delivered[i] == 0]


# --- the clients ---------------------------------------------------------------

class _Client(SMTPClient):
    """harness.SMTPClient with a short transcript (thousands of messages go
    through one session)."""

    def note(self, direction, data):
        self.transcript.append((direction, data[:300]))
        if len(self.transcript) > 60:
            del self.transcript[:30]


class Senders:
    """SENDERS threads sending ledger messages until stop() or until
    QUOTA messages have been handed out (None = no quota). A message whose
    final dot did not go out is given back to the pool."""

    def __init__(self, ledger, port, quota=None):
        self.ledger = ledger
        self.port = port
        self.quota = quota
        self.handed = 0
        self.acked = 0
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True)
                        for _ in range(SENDERS)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(60)
            if t.is_alive():
                raise AssertionError("a sender thread did not stop")

    def done(self):
        return all(not t.is_alive() for t in self.threads)

    def _take(self):
        with self.lock:
            if self.quota is not None and self.handed >= self.quota:
                return None
            i = self.ledger.take()
            if i is not None:
                self.handed += 1
            return i

    def _connect(self):
        while not self.stopping.is_set():
            try:
                c = _Client(self.port, timeout=30)
                c.banner()
                c.ehlo()
                return c
            except (AssertionError, OSError):
                time.sleep(0.05)
        return None

    def _run(self):
        c = None
        i = None
        try:
            while not self.stopping.is_set():
                if i is None:
                    i = self._take()
                    if i is None:
                        return
                if c is None:
                    c = self._connect()
                    if c is None:
                        break
                msg = self.ledger.message(i)
                final_sent = False
                try:
                    c.send("MAIL FROM:<sender@client.test>\r\n"
                           "RCPT TO:<%s>\r\nDATA\r\n" % RCPT)
                    codes = [c.reply().code for _ in range(3)]
                    if codes != [250, 250, 354]:
                        raise AssertionError("MAIL/RCPT/DATA got %r" % codes)
                    # UNKNOWN before the dot can go out: the primary may
                    # have the message before we read the 250.
                    self.ledger.mark(i, UNKNOWN)
                    c.send(dot_stuff(msg))
                    final_sent = True
                    r = c.reply()
                except (AssertionError, OSError):
                    # killed (or refused) somewhere in the transaction
                    if not final_sent:
                        self.ledger.mark(i, UNSENT)
                        self.ledger.give_back(i)
                        with self.lock:
                            self.handed -= 1
                    i = None
                    c.close()
                    c = None
                    continue
                if r.code == 250:
                    self.ledger.mark(i, ACKED)
                    with self.lock:
                        self.acked += 1
                elif 400 <= r.code < 500:
                    self.ledger.mark(i, UNSENT)  # not stored: send again later
                    self.ledger.give_back(i)
                    with self.lock:
                        self.handed -= 1
                else:
                    self.errors.append("message %d: %s" % (i, r.text))
                i = None
        except BaseException as e:      # reported by the main thread
            self.errors.append("sender: %r" % (e,))
        finally:
            if i is not None:
                self.ledger.give_back(i)
            if c is not None:
                c.close()


# --- the test --------------------------------------------------------------------

class CrashLedger(unittest.TestCase):
    TIMEOUT = 1500 if LONG else 300     # run.py's per-test alarm

    def setUp(self):
        self.sink_port = harness.free_ports(1)[0]
        self.sink = make_sink(self.sink_port)
        self.addCleanup(self.sink.stop)
        tmpl = (TEMPLATE % (harness.HOSTNAME, CONCURRENCY, DOMAIN)).replace(
            "@SINKPORT@", str(self.sink_port))
        self.daemon = harness.Daemon(
            template=tmpl,
            limits=dict(message_size="1M", recipients=5, connections=100,
                        connections_per_ip=50, command_timeout="60s",
                        data_timeout="60s", errors=100))
        self.addCleanup(self.daemon.cleanup)

    def kill(self, why, inflight_bound, extra=""):
        d = self.daemon
        t = time.monotonic() - self.t0
        d.kill9()
        self.kills.append((why, round(t, 2), inflight_bound, extra))
        # What the primary got before the kill belongs to this round: a
        # message whose last octets were on the wire at the kill is only
        # recorded once the sink has read them, so wait for its sessions
        # to end (the daemon's sockets are closed).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self.sink.lock:
                if self.sink.open == 0:
                    break
            time.sleep(0.01)
        self.ledger.collect(self.sink)
        self.ledger.round += 1

    def restart(self):
        self.daemon.start()
        self.restarts += 1

    def wait_deliveries(self, want, limit, stall=None):
        """Waits until WANT messages arrived since the call, for at most
        LIMIT seconds, or STALL seconds without a new one once one came
        (the rest may be leased, see LEASE). Returns how many came."""
        got = 0
        now = time.monotonic()
        deadline = now + limit
        last = now
        while got < want and now < deadline:
            n = self.ledger.collect(self.sink)
            now = time.monotonic()
            if n:
                got += n
                last = now
            elif stall is not None and got > 0 and now - last > stall:
                break
            if got < want:
                time.sleep(0.005)
        return got

    def wait_quiet(self, quiet, limit):
        """Collects until no message arrived for QUIET seconds (or LIMIT)."""
        now = time.monotonic()
        deadline = now + max(0, limit)
        last = now
        while now < deadline and now - last < quiet:
            if self.ledger.collect(self.sink):
                last = time.monotonic()
            time.sleep(0.05)
            now = time.monotonic()

    def dups_by_kill(self):
        """{kill number (1-based; 0 = after the last): extra copies of the
        messages whose first copy arrived before that kill}."""
        led = self.ledger
        out = collections.Counter()
        for i, c in led.delivered.items():
            if c > 1:
                r = led.first_round[i]
                out[r + 1 if r < len(self.kills) else 0] += c - 1
        return out

    def summary(self):
        led = self.ledger
        dups = sum(c - 1 for c in led.delivered.values() if c > 1)
        return dict(
            kills=len(self.kills),
            intake_kills=sum(1 for k in self.kills if k[0] == "intake"),
            redelivery_kills=sum(1 for k in self.kills if k[0] == "redelivery"),
            messages=led.n,
            acknowledged=led.count(ACKED),
            unacknowledged=led.count(UNKNOWN),
            delivered_unacknowledged=sum(1 for i, s in enumerate(led.state)
                                         if s == UNKNOWN and led.delivered[i]),
            lost=len(led.missing_acked()),
            corrupt=len(led.corrupt),
            duplicated=dups,
            duplicate_bound=sum(k[2] for k in self.kills),
            seconds=round(time.monotonic() - self.t0, 1),
        )

    def test_ledger_kill9_intake_and_redelivery(self):
        d = self.daemon
        run = "%x%04x" % (int(time.time()), SEED & 0xffff)
        rng = random.Random(SEED)
        self.ledger = led = Ledger(run, MESSAGES)
        self.kills = []
        self.restarts = 0
        self.t0 = time.monotonic()
        note("crash ledger: seed %d, %d kills, %d messages, sink %s, %s"
             % (SEED, KILLS, MESSAGES,
                "primary.SinkPrimary" if SinkPrimary else "own sink",
                harness.backupmx_path()))

        self.sink.set_greeting(GREETING_DOWN)
        d.start()
        n_intake = (KILLS + 1) // 2
        # Leave a tenth of the messages for the final phase (no kills).
        per_round = max(1, int(MESSAGES * 0.9) // max(1, n_intake))
        sender_errors = []
        idle_redelivery = 0

        for k in range(KILLS):
            if k % 2 == 0:
                # Intake: the primary refuses at the greeting, clients send.
                self.sink.set_greeting(GREETING_DOWN)
                s = Senders(led, d.port, quota=per_round).start()
                target = rng.randint(1, per_round)
                deadline = time.monotonic() + 60
                while (s.acked < target and not s.done()
                       and time.monotonic() < deadline):
                    time.sleep(0.002)
                time.sleep(rng.random() * 0.02)
                self.kill("intake", 0, "acked %d of quota %d" % (s.acked, per_round))
                s.stop()
                sender_errors += s.errors
                led.collect(self.sink)
                self.restart()
            else:
                # Redelivery: the primary answers; kill after R deliveries.
                pending = led.pending()
                self.sink.set_greeting(GREETING_UP)
                if pending > 0:
                    r = rng.randint(1, max(1, int(pending * 0.8)))
                    got = self.wait_deliveries(r, FIRST_DELIVERY_LIMIT, stall=2)
                else:
                    r = 0
                    got = self.wait_deliveries(1, rng.random() * 0.5)
                if got == 0:
                    idle_redelivery += 1
                # The primary is up: at most 2 messages in flight per
                # connection (one being delivered, one being recorded).
                self.kill("redelivery", 2 * CONCURRENCY,
                          "%d of %d pending delivered, aimed at %d" % (got, pending, r))
                self.sink.set_greeting(GREETING_DOWN)
                led.collect(self.sink)
                self.restart()

        # The rest: the primary up, no more kills.
        self.sink.set_greeting(GREETING_UP)
        s = Senders(led, d.port).start()
        deadline = time.monotonic() + (600 if LONG else 120)
        while not s.done() and time.monotonic() < deadline:
            led.collect(self.sink)
            time.sleep(0.05)
        s.stop()
        sender_errors += s.errors
        self.assertEqual(sender_errors, [], "client errors")
        self.assertEqual(led.count(UNSENT), 0, "messages never sent")

        # Drain: every acknowledged message arrives (as long as deliveries
        # go on: the primary is slower than intake, and what was leased
        # before a kill waits LEASE); then, once the flow has ended, the
        # queue must be empty (clean stop, qtool). What is still there
        # (stored but killed before its 250, leased) gets a restart.
        drain_t0 = time.monotonic()

        def drain_left():
            return DRAIN_CAP - (time.monotonic() - drain_t0)

        last = time.monotonic()
        while led.missing_acked() and drain_left() > 0:
            if led.collect(self.sink):
                last = time.monotonic()
            elif time.monotonic() - last > STALL_LIMIT:
                break
            time.sleep(0.05)
        acked_s = time.monotonic() - drain_t0
        empty = False
        while True:
            # Stop once the flow has ended: a SIGTERM while mail flows makes
            # the daemon finish the whole queue first (reported separately).
            self.wait_quiet(QUIET, drain_left())
            d.stop()                 # checked: exit 0, no sanitizer report
            left = d.queue_count()
            if left == (0, 0):
                empty = True
                break
            if drain_left() <= 0:
                break
            d.start()
            self.wait_deliveries(left[0], min(STALL_LIMIT, drain_left()))
        drain_s = time.monotonic() - drain_t0
        led.collect(self.sink)

        st = self.summary()
        note("crash ledger: kills=%(kills)d (intake %(intake_kills)d, redelivery "
             "%(redelivery_kills)d), messages=%(messages)d, acknowledged="
             "%(acknowledged)d, unacknowledged=%(unacknowledged)d (of which "
             "delivered %(delivered_unacknowledged)d), lost=%(lost)d, corrupt="
             "%(corrupt)d, duplicated=%(duplicated)d (bound %(duplicate_bound)d), "
             "%(seconds)ss" % st)
        by_kill = self.dups_by_kill()
        note("crash ledger: after the last send, %.1fs until the acknowledged "
             "messages were at the primary, %.1fs until the queue was empty (%s); "
             "%d redelivery kills found nothing to deliver within %ds"
             % (acked_s, drain_s, "empty" if empty else "NOT empty", idle_redelivery,
                FIRST_DELIVERY_LIMIT))
        note("crash ledger: duplicates by kill (kill: copies) %s; most at one "
             "kill %d" % (dict(sorted(by_kill.items())),
                          max(by_kill.values()) if by_kill else 0))
        # The bound is checked on the sum (below). A single kill over its
        # own bound is worth a look even when the sum holds: the daemon may
        # start a connection's next message before the last one's delivery
        # record is flushed, so up to two per connection can be in flight.
        for n, k in enumerate(self.kills):
            if by_kill.get(n + 1, 0) > k[2]:
                note("crash ledger: NOTE kill %d (%s) made %d duplicates, over "
                     "its in-flight bound %d" % (n + 1, k[0], by_kill[n + 1], k[2]))
        detail = "\n".join("kill %d: %s at %ss, in-flight bound %d, %s, duplicates %d"
                           % ((n + 1,) + k + (by_kill.get(n + 1, 0),))
                           for n, k in enumerate(self.kills))
        detail += "\n" + d.log_tail(30)

        self.assertEqual(d.sanitizer_reports(0), "", "sanitizer report in the log")
        missing = led.missing_acked()
        self.assertEqual(missing, [], "acknowledged but never delivered: %s\n%s"
                         % ([led.mid(i) for i in missing[:20]], detail))
        self.assertEqual(led.corrupt, [], "corrupt deliveries:\n%s" % detail)
        self.assertEqual(led.strangers, [], "deliveries of unknown messages")
        self.assertEqual(led.attempted_unsent, [],
                         "delivered, but their DATA never ended: %s"
                         % [led.mid(i) for i in led.attempted_unsent[:20]])
        self.assertTrue(empty, "queue not empty %.0fs after the last kill: %r\n%s"
                        % (drain_s, left, detail))
        dup = sorted((c - 1, led.mid(i)) for i, c in led.delivered.items() if c > 1)
        self.assertEqual(by_kill.get(0, 0), 0,
                         "duplicates of messages first delivered after the last "
                         "kill: %s" % dup[-10:])
        self.assertLessEqual(
            st["duplicated"], st["duplicate_bound"],
            "more duplicates than messages in flight at the kills: %d > %d\n"
            "most duplicated: %s\n%s" % (st["duplicated"], st["duplicate_bound"],
                                          dup[-10:], detail))


if __name__ == "__main__":
    unittest.main()
