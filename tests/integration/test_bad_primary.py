"""A bad primary (issue 9, item 3): whatever the next hop does, queued mail
is delivered in the end, whole, and a message is never recorded as sent
unless a complete 2xx reply to its end of data came back.

Flapping        the primary goes down and up every second (listener
                closed, open connections reset) while 1,000 messages
                (BMX_LONG=1: 5,000) flow: all arrive, byte for byte, to the
                right recipient; duplicates at most one per reset
                connection; the queue ends empty.
Misbehaving     one domain and one scripted primary (badprimary.py) per
                case, all run at once; each case misbehaves on the first
                attempt only, then the primary is normal:
  garbage       non-numeric, 1xx/6xx, missing space or hyphen, binary,
                mixed codes in one multi-line reply, 250 to DATA instead
                of 354, 354 to the end of data: never "sent", never
                bounced; delivered exactly once on a later attempt.
  drops         the connection lost around the end of data. OUR CHOICE
                (RFC 5321 6.1, RFC 1047): a message counts as delivered
                only once the complete final line of a 2xx reply to its
                end of data has been read; EOF, RST, half a line or an
                unfinished multi-line reply before that means "not
                delivered" and the message is sent again. So a primary
                that stored the message and died before its 250 reached
                us gets it twice (tested: exactly 2 copies), one that died
                before storing it gets it once (no loss), and a complete
                250 followed by a close is not sent again (exactly 1).
  stalls        no reply after the data (our data timeout fires), after
                DATA, at the greeting: the message stays queued and is
                delivered later.
  split         every reply one byte per packet, multi-line replies too.
  enormous      1 MB reply lines without CRLF (and with), a 64 MB line, a
                64 MB stream of continuation lines: cut off (the primary
                cannot push it all), the daemon's heap does not grow with
                it, the message is delivered later.
ExtraReply      two replies to one end of data, with more messages queued
                behind it on the same connection (concurrency 1): the
                connection is dropped instead of answering the next
                transaction's commands with stale replies.
Tls             a primary with STARTTLS: the mail goes over TLS; a 220 to
                STARTTLS with more replies behind it in the same packet
                (response injection) ends the connection, and the next
                attempt delivers over TLS.

Timeouts are the daemon's (limits: command_timeout 3s, data_timeout 5s);
nothing here asserts how long anything took.
"""

import os
import re
import shutil
import tempfile
import threading
import time

import harness
from badprimary import Action, BadPrimary, endless
from harness import DaemonTestCase, send_messages, wait_until

LONG = os.environ.get("BMX_LONG") == "1"
N_FLAP = 5000 if LONG else 1000
SENDER = "sender@sender.test"
HOSTNAME = harness.HOSTNAME

TEMPLATE = """# backupmx bad-primary test config (generated)
hostname = "%s"
spool = "@SPOOL@"
@USER@
listen = { @LISTEN@ }
limits { @LIMITS@ }
queue { retry_min = 1s  retry_max = %%(retry_max)s  lifetime = 1h  delay_warning = 0
        concurrency = %%(concurrency)d }
domain "sender.test" { mode = "relay"  primary = { "127.0.0.1:%%(dsn)d" } }
%%(domains)s
@EXTRA@
""" % HOSTNAME


def domain_lines(ports):
    return "\n".join('domain "%s" { mode = "relay"  primary = { "127.0.0.1:%d" } }'
                     % (d, p) for d, p in sorted(ports.items()))


def make_msg(token, size=600):
    body = b"".join(b"line %03d of %s: .dots, From lines and all\r\n"
                    % (i, token.encode()) for i in range(max(1, size // 50)))
    return (b"From: <sender@sender.test>\r\n"
            b"To: <someone@example.test>\r\n"
            b"Subject: " + token.encode() + b"\r\n"
            b"Message-ID: <" + token.encode() + b"@sender.test>\r\n"
            b"\r\n" + b".leading dot\r\n" + body + b"end " + token.encode() + b"\r\n")


def rss_anon_kb(pid):
    """The daemon's anonymous resident memory (its heap), in KB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class _Base(DaemonTestCase):
    """A daemon whose domains each have their own BadPrimary (DOMAINS),
    plus a normal primary for sender.test that would catch any DSN."""

    DOMAINS = ()
    TLS_DOMAINS = ()             # their primaries offer STARTTLS
    RETRY_MAX = "2s"
    CONCURRENCY = 4
    TIMEOUT = 120

    @classmethod
    def setUpClass(cls):
        started = []
        try:
            ports = harness.free_ports(len(cls.DOMAINS) + 1)
            cls.dsn_sink = BadPrimary(ports[0], hostname="mx.sender.test")
            started.append(cls.dsn_sink)
            cls.prim = {}
            tls = None
            if cls.TLS_DOMAINS:
                certdir = tempfile.mkdtemp(prefix="bmx-badprimary-")
                cls.addClassCleanup(shutil.rmtree, certdir, True)
                tls = harness.make_cert(certdir)
            for d, p in zip(cls.DOMAINS, ports[1:]):
                cls.prim[d] = BadPrimary(p, hostname="mx1." + d,
                                         tls=tls if d in cls.TLS_DOMAINS else None)
                started.append(cls.prim[d])
            tmpl = TEMPLATE % dict(retry_max=cls.RETRY_MAX, dsn=ports[0],
                                   concurrency=cls.CONCURRENCY,
                                   domains=domain_lines(dict(zip(cls.DOMAINS, ports[1:]))))
            cls.DAEMON_ARGS = dict(template=tmpl,
                                   limits=dict(errors=100000, connections=200,
                                               connections_per_ip=100))
            super().setUpClass()
        except BaseException:
            for s in started:
                s.stop()
            raise
        for s in started:
            cls.addClassCleanup(s.stop)

    # --- helpers -----------------------------------------------------------
    def token(self, what):
        return "bmx-bad-%s-%x%04x" % (what, int(time.time()), os.getpid() % 65536)

    def copies(self, prim, token):
        """Committed transactions at PRIM holding TOKEN."""
        t = token.encode()
        return [tx for tx in prim.committed() if tx.data is not None and t in tx.data]

    def check_copy(self, tx, qid, msg, rcpt, where):
        """TX = our Received (naming QID) + MSG unchanged, for RCPT."""
        self.assertEqual(tx.rcpts, [rcpt], where + ": recipients")
        self.assertEqual(tx.sender, SENDER, where + ": envelope sender")
        rec, rest = harness.split_received(tx.data)
        self.assertIn(("by " + HOSTNAME).encode(), rec, where)
        self.assertIn(qid.encode(), rec, where + ": our Received names the queue id")
        self.assertEqual(rest, msg, where + ": the message as it was sent to us")

    def status_lines(self, qid, status, since=0):
        return re.findall(r"(?m)^\S+ backupmx\[\d+\]: %s: to=<[^>]*>, .*status=%s "
                          % (re.escape(qid), status), self.daemon.log(since))

    def run_cases(self, cases, extra_msgs=0, settle=2.0, queue_first=False):
        """Plans every case on its own primary, sends one message per case
        (plus EXTRA_MSGS more to each), waits until every plan was used and
        every message delivered, then checks each case. QUEUE_FIRST: the
        primaries are down while the mail comes in, so that it waits in the
        queue and goes out over one connection when they come up."""
        d = self.daemon
        mark = d.log_mark()
        sent = {}                       # case name -> [(qid, token, msg, rcpt)]
        for c in cases:
            p = self.prim[_slug(c.name) + ".test"]
            p.plan(c.stage, c.action)
            if queue_first:
                p.down()
        items, keys = [], []
        for c in cases:
            dom = _slug(c.name) + ".test"
            for k in range(1 + extra_msgs):
                token = self.token("%s-%d" % (_slug(c.name), k))
                msg = make_msg(token)
                rcpt = "user%d@%s" % (k, dom)
                items.append(dict(sender=SENDER, rcpts=[rcpt], msg=msg))
                keys.append((c.name, token, msg, rcpt))
        qids = send_messages(d.port, items, sessions=4)
        for (name, token, msg, rcpt), qid in zip(keys, qids):
            sent.setdefault(name, []).append((qid, token, msg, rcpt))
        for c in cases if queue_first else ():
            d.wait_log(r"destination %s is down" % re.escape(_slug(c.name) + ".test"),
                       10, since=mark)
            self.prim[_slug(c.name) + ".test"].up()

        def outstanding():
            out = []
            for c in cases:
                p = self.prim[_slug(c.name) + ".test"]
                if p.pending(c.stage):
                    out.append("%s: not used yet" % c.name)
                    continue
                for qid, token, _, _ in sent[c.name]:
                    n = len(self.copies(p, token))
                    if n < min(c.copies):
                        out.append("%s: %s has %d of at least %d copies"
                                   % (c.name, qid, n, min(c.copies)))
            return out
        try:
            wait_until(lambda: not outstanding(), 60, "every case played and every "
                       "message delivered", interval=0.1,
                       detail=lambda: "%s\n%s" % ("\n".join(outstanding()), d.log_tail(25)))
        finally:
            for c in cases:
                self.prim[_slug(c.name) + ".test"].release()
        time.sleep(settle)              # a wrong extra copy would show now
        problems = []
        for c in cases:
            problems += self.check_case(c, sent[c.name], mark)
        if problems:
            self.fail("%d problem(s):\n%s\n%s" % (len(problems), "\n".join(problems),
                                                  d.log_tail(30)))
        self.assert_no_dsn()
        self.assertNotRegex(d.log(mark), r"status=bounced")

    def check_case(self, c, msgs, mark):
        p = self.prim[_slug(c.name) + ".test"]
        out = []
        used = [a for _, st, a in p.used if st == c.stage and a is c.action]
        if not used:
            out.append("%s: the misbehaviour was never served" % c.name)
        for qid, token, msg, rcpt in msgs:
            got = self.copies(p, token)
            if len(got) not in c.copies:
                out.append("%s: %s has %d committed copies at the primary, want %s"
                           % (c.name, qid, len(got), sorted(c.copies)))
            for tx in got:
                try:
                    self.check_copy(tx, qid, msg, rcpt, c.name)
                except AssertionError as e:
                    out.append("%s: %s" % (c.name, str(e)[:300]))
            n_sent = len(self.status_lines(qid, "sent", mark))
            if n_sent != 1:
                out.append("%s: %s logged status=sent %d times, want 1"
                           % (c.name, qid, n_sent))
        if c.cut:
            cut = [n for st, name, n in p.cutoffs if name == c.name]
            total = 64 * MB
            if not cut or cut[0] >= total:
                out.append("%s: the daemon read the whole %d MB (cut off after %r "
                           "bytes): not bounded" % (c.name, total // MB, cut))
        return out

    def assert_no_dsn(self):
        self.assertEqual([t for t in self.dsn_sink.transactions], [],
                         "a DSN went to the sender: something bounced")


# =============================================================================
# Flapping
# =============================================================================

class Flapping(_Base):
    """Down and up every second while mail flows. retry_max = 1s: a probe
    every second, so probes cannot lock onto the down phases."""

    DOMAINS = ("flap.test",)
    RETRY_MAX = "1s"
    TIMEOUT = 900 if LONG else 150

    def test_flapping_primary_loses_nothing(self):
        fl = self.prim["flap.test"]
        d = self.daemon
        mark = d.log_mark()
        run = "%x" % int(time.time())
        items, sent = [], {}
        for i in range(N_FLAP):
            token = "bmx-flap-%05d-%s" % (i, run)
            msg = make_msg(token, size=300 + (i * 37) % 3000)
            rcpt = "m%05d@flap.test" % i
            items.append(dict(sender=SENDER, rcpts=[rcpt], msg=msg))
            sent[token] = (msg, rcpt)
        # About 15 ms per message at the dot: the drain must outlast several
        # periods, or a fast daemon would be done before the first reset.
        fl.always("dot", Action(b"250 2.0.0 Ok: queued\r\n", chunk=8, delay=0.005,
                                commit=True, name="slow dot"))
        fl.flap(1.0)
        try:
            qids = send_messages(d.port, items, sessions=4)
            tokens = list(sent)
            qid_of = dict(zip(tokens, qids))
            tok_re = re.compile(rb"bmx-flap-\d{5}-" + run.encode())

            def arrived():
                return {m.group(0).decode() for tx in fl.committed()
                        for m in [tok_re.search(tx.data or b"")] if m}
            # still flapping while the queue drains
            wait_until(lambda: len(arrived()) >= N_FLAP, 60 + N_FLAP // 20,
                       "all %d messages at the flapping primary" % N_FLAP,
                       interval=0.2, detail=lambda: "%d arrived, %d resets\n%s"
                       % (len(arrived()), fl.kills, d.log_tail(15)))
        finally:
            fl.steady()
            fl.always("dot", None)
        time.sleep(2)                   # late duplicates would show now
        counts = {}
        problems = []
        for tx in fl.committed():
            m = tok_re.search(tx.data or b"")
            if not m:
                problems.append("a message without a token: %r" % tx)
                continue
            tok = m.group(0).decode()
            counts[tok] = counts.get(tok, 0) + 1
            msg, rcpt = sent[tok]
            try:
                self.check_copy(tx, qid_of[tok], msg, rcpt, tok)
            except AssertionError as e:
                problems.append(str(e)[:300])
        missing = [t for t in sent if t not in counts]
        dups = sum(c - 1 for c in counts.values())
        print("# flapping: %d messages, %d connections, %d resets (%d mid-transaction), "
              "%d duplicates" % (N_FLAP, fl.connections, fl.kills, fl.kills_in_txn, dups))
        self.assertEqual(missing, [], "messages never delivered")
        self.assertEqual(problems[:5], [], "%d copies differ from what was sent"
                         % len(problems))
        self.assertGreater(fl.kills, 0, "the primary never went down with a "
                           "connection open: the test did not test flapping")
        # A reset connection can leave at most one transaction ambiguous.
        self.assertLessEqual(dups, fl.kills, "more duplicates than resets")
        self.assertEqual(re.findall(r"status=bounced", d.log(mark)), [])
        self.assert_no_dsn()
        self.assertEqual(self.queue_count(), (0, 0), "the queue after the drain")


# =============================================================================
# Misbehaving primaries: one case per domain, all at once
# =============================================================================

MB = 1 << 20


class Case:
    """STAGE misbehaves with ACTION on the first attempt. COPIES: the
    committed copies the primary must end up with (a set of allowed
    counts). CUT: the action's data must be cut off by the daemon."""

    def __init__(self, name, stage, action, copies=(1,), cut=False):
        self.name = name
        self.stage = stage
        self.action = action
        action.name = name
        self.copies = set(copies)
        self.cut = cut


def A(data=b"", **kw):
    return Action(data, **kw)


GARBAGE = [
    Case("greeting-not-a-reply", "greeting", A(b"hello there, no code\r\n")),
    Case("greeting-letter-in-code", "greeting", A(b"22O mx1 ESMTP\r\n")),
    Case("greeting-binary", "greeting", A(b"\x00\xff\xfe\x80\x1b[2J\x07\r\n")),
    Case("ehlo-no-space", "ehlo", A(b"250mx1.bad.test\r\n")),
    Case("ehlo-two-digits", "ehlo", A(b"25 mx1\r\n")),
    Case("mail-non-numeric", "mail", A(b"OK fine\r\n")),
    Case("mail-1xx", "mail", A(b"150 2.1.0 maybe\r\n")),
    Case("mail-6xx", "mail", A(b"650 2.1.0 maybe\r\n")),
    Case("rcpt-binary", "rcpt", A(b"\x01\x02\x03\x04\xfe\r\n")),
    Case("rcpt-mixed-codes", "rcpt", A(b"250-2.1.5 fine\r\n550 5.1.1 no such user\r\n")),
    Case("rcpt-354", "rcpt", A(b"354 2.1.5 go on\r\n")),
    Case("data-250-not-354", "data", A(b"250 2.0.0 Ok\r\n")),
    Case("data-tab-not-space", "data", A(b"354\tgo ahead\r\n")),
    Case("dot-four-digits", "dot", A(b"2500 Ok: queued\r\n")),
    Case("dot-no-space", "dot", A(b"250Ok: queued\r\n")),
    Case("dot-empty-line", "dot", A(b"\r\n")),
    Case("dot-354", "dot", A(b"354 2.0.0 more data?\r\n")),
    Case("dot-nul-first", "dot", A(b"\x00250 2.0.0 Ok\r\n")),
    Case("dot-hyphen-then-other-code", "dot", A(b"250-2.0.0 Ok\r\n451 4.3.0 but no\r\n")),
    # a good 250 with control bytes and escapes in its text: delivered, and
    # the text is not copied raw into our log
    Case("dot-250-binary-text", "dot", A(b"250 2.0.0 Ok \x1b[31m\x07\x08\xff\x00 queued\r\n",
                                          commit=True)),
]

DROPS = [
    # the primary kept the message and never said so: twice, by choice
    Case("dot-eof-no-reply-kept", "dot", A(after="close", commit=True), copies=(2,)),
    Case("dot-rst-no-reply-kept", "dot", A(after="rst", commit=True), copies=(2,)),
    Case("dot-half-a-250-kept", "dot", A(b"250 2.0.0 Ok: qu", after="close", commit=True),
         copies=(2,)),
    Case("dot-unfinished-multiline-kept", "dot",
         A(b"250-2.0.0 Ok\r\n250-queued as X\r\n", after="close", commit=True), copies=(2,)),
    # ... and did not keep it: once, i.e. not lost
    Case("dot-eof-no-reply-lost", "dot", A(after="close", commit=False)),
    Case("dot-half-a-250-lost", "dot", A(b"250 2.0.0 Ok: qu", after="close", commit=False)),
    # a whole 250 line reached us: delivered, not sent again
    Case("dot-250-then-eof", "dot", A(b"250 2.0.0 Ok: queued\r\n", after="close",
                                      commit=True)),
    # a whole 250 then RST: the kernel may drop the unread 250 with the RST
    Case("dot-250-then-rst", "dot", A(b"250 2.0.0 Ok: queued\r\n", after="rst",
                                      commit=True), copies=(1, 2)),
    Case("mail-eof", "mail", A(after="close")),
    Case("rcpt-rst", "rcpt", A(after="rst")),
    Case("data-354-then-eof", "data", A(b"354 go ahead\r\n", after="close")),
    Case("body-eof-midway", "body", A(after="close")),
    Case("greeting-421-then-eof", "greeting", A(b"421 4.3.2 shutting down\r\n",
                                                after="close")),
]

STALLS = [
    Case("dot-stall", "dot", A(after="stall", commit=False)),
    Case("dot-stall-kept", "dot", A(after="stall", commit=True), copies=(2,)),
    Case("data-stall", "data", A(after="stall")),
    Case("greeting-stall", "greeting", A(after="stall")),
    Case("dot-half-line-stall", "dot", A(b"250 2.0.0 Ok", after="stall", commit=False)),
]

SPLIT = [
    Case("dot-multiline-byte-by-byte", "dot",
         A(b"250-2.0.0 Ok\r\n250-second line\r\n250 2.0.0 Ok: queued as SPLIT1\r\n",
           chunk=1, delay=0.002, commit=True)),
    Case("ehlo-byte-by-byte", "ehlo",
         A(b"250-mx1.split.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
           chunk=1, delay=0.002)),
]

ENORMOUS = [
    Case("greeting-1mb-no-crlf", "greeting", A(b"220 " + b"x" * MB, after="stall")),
    Case("dot-1mb-no-crlf", "dot", A(b"250 " + b"y" * MB, after="stall")),
    Case("dot-1mb-line", "dot", A(b"250 " + b"z" * MB + b"\r\n", after="stall")),
    Case("ehlo-1mb-continuation", "ehlo", A(b"250-" + b"w" * MB + b"\r\n250 ok\r\n",
                                            after="stall")),
    Case("rcpt-64mb-no-crlf", "rcpt", A(endless(b"v", 64 * MB), after="stall"), cut=True),
    Case("ehlo-64mb-of-continuation-lines", "ehlo",
         A(endless(b"250-SHORT EXTENSION LINE\r\n", 64 * MB), after="stall"), cut=True),
    Case("dot-64mb-of-continuation-lines", "dot",
         A(endless(b"250-2.0.0 still going\r\n", 64 * MB), after="stall"), cut=True),
]

EXTRA = [
    # two replies to one end of data: the second must not answer the next
    # transaction's MAIL (two messages go to this domain, see below)
    Case("dot-two-replies", "dot",
         A(b"250 2.0.0 Ok: queued\r\n250 2.0.0 Ok: queued again\r\n", commit=True)),
]


def _slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


ALL_CASES = GARBAGE + DROPS + STALLS + SPLIT + ENORMOUS


class Misbehaving(_Base):
    DOMAINS = tuple("%s.test" % _slug(c.name) for c in ALL_CASES)
    TIMEOUT = 150

    # --- the tests -------------------------------------------------------------
    def test_garbage_replies_defer_then_deliver_once(self):
        self.run_cases(GARBAGE)
        # a garbage reply is never logged raw (control bytes, escapes)
        log = self.daemon.log()
        self.assertNotRegex(log, "[\x00-\x08\x0b-\x1f\x7f]",
                            "control characters from a primary's reply in the log")

    def test_connection_lost_around_end_of_data(self):
        mark = self.daemon.log_mark()
        self.run_cases(DROPS)
        # the ambiguous attempt is logged as deferred, not sent
        for c in DROPS:
            if c.stage != "dot" or c.copies != {2}:
                continue
            self.assertRegex(self.daemon.log(mark),
                             r"to=<user0@%s>, .*status=deferred"
                             % re.escape(_slug(c.name) + ".test"), c.name)

    def test_stalled_primary_our_timeout_fires(self):
        mark = self.daemon.log_mark()
        self.run_cases(STALLS)
        log = self.daemon.log(mark)
        self.assertRegex(log, r"dot-stall\.test: timeout with .*\]:\d+ while in state",
                         "the data timeout after the end of data")

    def test_replies_split_byte_by_byte(self):
        p = self.prim["dot-multiline-byte-by-byte.test"]
        p.split(1, 0.001)               # every normal reply too
        mark = self.daemon.log_mark()
        try:
            self.run_cases(SPLIT)
        finally:
            p.normal()
        # the three lines were put together into one reply
        self.assertRegex(self.daemon.log(mark),
                         r"to=<user0@dot-multiline-byte-by-byte\.test>, .*status=sent "
                         r"\(250-2\.0\.0 Ok second line 2\.0\.0 Ok: queued as SPLIT1\)")

    def test_enormous_replies_cut_off(self):
        pid = self.daemon.pid
        base = rss_anon_kb(pid)
        peak = [base]
        stop = []

        def sample():
            while not stop:
                peak[0] = max(peak[0], rss_anon_kb(pid))
                time.sleep(0.01)
        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            self.run_cases(ENORMOUS)
        finally:
            stop.append(1)
            t.join(5)
        grown = (peak[0] - base) // 1024
        print("# enormous replies: daemon heap %d MB -> peak %d MB"
              % (base // 1024, peak[0] // 1024))
        self.assertLess(grown, 32, "the daemon's heap grew by %d MB while primaries "
                        "sent 64 MB replies" % grown)


class ExtraReply(_Base):
    """One connection at a time, so that the queued messages follow each
    other over the connection that got two replies to one end of data."""

    DOMAINS = tuple("%s.test" % _slug(c.name) for c in EXTRA)
    CONCURRENCY = 1

    def test_two_replies_to_one_end_of_data(self):
        mark = self.daemon.log_mark()
        self.run_cases(EXTRA, extra_msgs=3, queue_first=True)
        # the next transaction did start on that connection, and the stale
        # reply was caught (behind the 250, or as the reply to DATA)
        self.assertRegex(self.daemon.log(mark), r"more replies than commands from|"
                         r"in reply to DATA")


TLS_CASES = [
    # response injection after STARTTLS (the 220 and more in one packet):
    # nothing after the 220 may be taken as a reply
    Case("starttls-injection", "starttls",
         A(b"220 2.0.0 Ready to start TLS\r\n250-mx1 injected\r\n250 PIPELINING\r\n")),
]


class Tls(_Base):
    """Primaries that offer STARTTLS (self-signed: tls = "may")."""

    DOMAINS = ("tls-plain-run.test",) + tuple("%s.test" % _slug(c.name) for c in TLS_CASES)
    TLS_DOMAINS = DOMAINS

    def test_starttls_to_the_primary(self):
        p = self.prim["tls-plain-run.test"]
        mark = self.daemon.log_mark()
        token = self.token("tls")
        msg = make_msg(token)
        qid = send_messages(self.daemon.port, [dict(sender=SENDER, msg=msg,
                                                    rcpts=["user@tls-plain-run.test"])])[0]
        p.wait(lambda s: self.copies(s, token), 15, "the message over TLS")
        time.sleep(0.5)
        got = self.copies(p, token)
        self.assertEqual(len(got), 1)
        self.check_copy(got[0], qid, msg, "user@tls-plain-run.test", "tls")
        self.assertTrue(got[0].tls, "the transaction did not run over TLS")
        self.daemon.wait_log(r"tls-plain-run\.test: TLS connection established to ", 5,
                             since=mark)

    def test_starttls_response_injection(self):
        mark = self.daemon.log_mark()
        self.run_cases(TLS_CASES)
        for c in TLS_CASES:
            for tx in self.prim[_slug(c.name) + ".test"].committed():
                self.assertTrue(tx.tls, "%s: delivered without TLS" % c.name)
        self.assertRegex(self.daemon.log(mark), r"more replies than commands from")


class LeaseAfterCrash(_Base):
    """Mail being delivered when the daemon is killed carries a lease (its
    next attempt a minute ahead, so that a live scheduler does not take it
    twice). After a crash nobody holds it: the next start makes it due at
    once instead of letting it wait the minute out."""

    DOMAINS = ("lease.test",)

    def test_in_flight_mail_due_at_once_after_a_crash(self):
        p = self.prim["lease.test"]
        p.always("greeting", Action(after="stall"))      # connects, never answers
        with self.daemon.connect() as c:
            c.ehlo()
            for i in range(3):
                c.send_mail(sender="s@sender.test", rcpts=["u%d@lease.test" % i])
            c.quit()
        wait_until(lambda: p.connections >= 1, 20, "a delivery attempt under way")
        time.sleep(0.5)
        self.daemon.kill9()
        p.always("greeting", None)
        p.release()
        t0 = time.monotonic()
        mark = self.daemon.log_mark()
        self.daemon.start()
        p.wait(lambda pr: len(pr.delivered()) >= 3, 30, "3 deliveries after the restart")
        took = time.monotonic() - t0
        self.assertLess(took, 30, "waited for the lease (60 s)")
        self.assertRegex(self.daemon.log(mark),
                         r"\d+ recipients were in memory when the daemon last stopped: due now")
        print("# in-flight mail delivered %.1fs after the restart that followed a kill -9" % took)
