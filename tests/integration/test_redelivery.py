"""Redelivery (issue 3): queued mail reaches the primary, whole and exactly
once, as soon as it answers again.

PostfixPrimaryComesBack  500 messages queue while the primary is down; a
                         real Postfix primary (Maildirs) then gets each once,
                         byte for byte, within seconds; the queue empties.
Redelivery               one daemon, a dnsmasq for MX records and scripted
                         Python primaries: MX selection and self-detection
                         by address, per-recipient 4xx/5xx outcomes, DSNs
                         (multipart/report) delivered by MX lookup of the
                         sender's domain, lifetime expiry, the probe rate
                         while a primary is down and the bounded drain,
                         the delivery log lines.
Etrn                     ETRN (RFC 1985) from an allowed and from another
                         client, both forms, with a backoff of an hour.

Addresses: the backup listens on 127.0.0.1 (an interface address: lo);
MX hosts live on 127.0.0.2-4, which reach lo but are not interface
addresses, so the daemon must tell them apart from itself by address.
Every MX host is reached on queue.mx_port (one port, the same on every
127.0.0.x); a listener on 127.0.0.1:mx_port catches any delivery to self.
"""

import email
import email.utils
import math
import os
import random
import re
import time
import unittest

import harness
from harness import DaemonTestCase, queue_list, send_messages, wait_until
from primary import (Dnsmasq, PostfixPrimary, SinkPrimary, free_port_on)

HOSTNAME = harness.HOSTNAME          # mx2.example.test, in every config

TEMPLATE_HEAD = """# backupmx redelivery test config (generated)
hostname = "%s"
spool = "@SPOOL@"
@USER@
listen = { @LISTEN@ }
limits { @LIMITS@ }
""" % HOSTNAME


def sent_line_re(pid, qid, rcpt, relay_host, relay_ip, port, dsn, status):
    """The Postfix-style delivery line of the spec:
    <qid>: to=<...>, relay=host[ip]:port, delay=..., dsn=X.Y.Z,
    status=S (reply); "delays=" and "orig_to=" are allowed in between."""
    return (r"^\S+ backupmx\[%d\]: %s: to=<%s>, (?:orig_to=<[^>]*>, )?"
            r"relay=%s\[%s\]:%d, delay=\d+(?:\.\d+)?, (?:delays=[\d./]+, )?"
            r"dsn=%s, status=%s \((.+)\)$"
            % (pid, re.escape(qid), re.escape(rcpt), re.escape(relay_host),
               re.escape(relay_ip), port, dsn, status))


def lf(b):
    return b.replace(b"\r\n", b"\n")


def header_fields(data, nl=b"\n"):
    """Yields (name_lower, field_bytes, end_offset) for each header field
    from the top of DATA until the blank line."""
    pos = 0
    while pos < len(data) and not data.startswith(nl, pos):
        end = data.find(nl, pos)
        if end < 0:
            return
        end += len(nl)
        while data[end:end + 1] in (b" ", b"\t"):
            e2 = data.find(nl, end)
            if e2 < 0:
                return
            end = e2 + len(nl)
        field = data[pos:end]
        yield field.split(b":", 1)[0].strip().lower().decode("latin-1"), field, end
        pos = end


def parse_dsn(data):
    """Parses a DSN (bytes); returns (msg, per-message fields, [per-rcpt
    fields], headers-part text). Fails if it is not a multipart/report of
    report-type delivery-status."""
    msg = email.message_from_bytes(data)
    if msg.get_content_type() != "multipart/report":
        raise AssertionError("DSN is %s, not multipart/report:\n%r"
                             % (msg.get_content_type(), data[:1500]))
    rt = (msg.get_param("report-type") or "").lower()
    if rt != "delivery-status":
        raise AssertionError("multipart/report with report-type=%r, want "
                             "delivery-status:\n%r" % (rt, data[:1500]))
    parts = msg.get_payload()
    if not isinstance(parts, list) or len(parts) < 2:
        raise AssertionError("multipart/report needs at least 2 parts:\n%r"
                             % data[:3000])
    ds = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    if len(ds) != 1:
        raise AssertionError("want one message/delivery-status part, got "
                             "%r" % [p.get_content_type() for p in parts])
    blocks = ds[0].get_payload()
    if not isinstance(blocks, list) or len(blocks) < 2:
        raise AssertionError("delivery-status part has no per-recipient "
                             "block:\n%r" % data[:3000])
    orig = ""
    for p in parts[2:]:
        if p.get_content_type() in ("text/rfc822-headers", "message/rfc822",
                                    "message/rfc822-headers",
                                    "message/global-headers", "message/global"):
            orig += p.as_string()
    return msg, blocks[0], blocks[1:], orig


def fields_of(block):
    return {k.lower(): str(v).strip() for k, v in block.items()}


def addr_of(typed):
    """'rfc822; a@b' -> 'a@b'."""
    return typed.split(";", 1)[1].strip() if ";" in typed else typed.strip()


# =============================================================================
# 1. 500 messages, primary down, then a real Postfix primary comes back
# =============================================================================

N_MESSAGES = 500
RETRY_MAX_PF = 2            # seconds
DRAIN_LIMIT = RETRY_MAX_PF + 10   # "within a few seconds of it answering"


def _make_redelivery_message(i, run, rng):
    """A message with what tends to break a relay: leading dots, a lone dot,
    'From ' lines, trailing blanks, tabs, long lines, 8-bit text (sent with
    BODY=8BITMIME), sizes from 300 B to 60 KB. Returns (bytes, eight_bit)."""
    token = "bmx-redeliv-%04d-%s" % (i, run)
    eight = i % 7 == 0
    hdr = [b"From: Sender Name <a@b.test>",
           b"To: <user@example.test>",
           b"Subject: redelivery " + token.encode(),
           b"Date: " + email.utils.formatdate(localtime=False).encode(),
           b"Message-ID: <" + token.encode() + b"@b.test>",
           b"MIME-Version: 1.0"]
    if eight:
        hdr += [b"Content-Type: text/plain; charset=utf-8",
                b"Content-Transfer-Encoding: 8bit"]
    else:
        hdr += [b"Content-Type: text/plain; charset=us-ascii"]
    hdr.append(b"X-Test-Folded: first part,\r\n\tsecond part  ")
    special = [b".leading dot", b"..two dots", b".", b"From the start of a line",
               b"trailing blanks   ", b"tab\tinside\t", b"", b" leading space",
               b"x" * 990, b"-- ", b"..", b"=?not-encoded?="]
    if eight:
        special += ["Gr\u00fc\u00dfe, na\u00efve caf\u00e9 \u2603 \u65e5\u672c".encode(),
                    b"\xc3\xa9\xc3\xa8 latin in utf-8"]
    target = rng.choice([300, 800, 2000, 4096, 4096, 10000, 20000] +
                        ([60000] if i % 50 == 0 else []))
    lines = [b"Message %d of the redelivery test." % i]
    size = 0
    while size < target:
        if rng.random() < 0.3:
            l = rng.choice(special)
        else:
            l = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz .,;:-_0123456789ABC")
                      for _ in range(rng.randint(0, 78)))
        lines.append(l)
        size += len(l) + 2
    lines.append(b"end of " + token.encode())
    msg = b"\r\n".join(hdr) + b"\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    return msg, eight


class PostfixPrimaryComesBack(DaemonTestCase):
    """Acceptance 1. A real Postfix (PEERS.md recipe) as the primary."""

    TIMEOUT = 240

    @classmethod
    def setUpClass(cls):
        why = PostfixPrimary.available()
        if why:
            raise unittest.SkipTest(why)
        cls.pport = harness.free_ports(1)[0]
        tmpl = TEMPLATE_HEAD + """
queue { retry_min = 1s  retry_max = %ds  lifetime = 1h  delay_warning = 0  concurrency = 4 }
domain "example.test" { mode = "relay"  primary = { "127.0.0.1:%d" } }
@EXTRA@
""" % (RETRY_MAX_PF, cls.pport)
        cls.DAEMON_ARGS = dict(template=tmpl, limits=dict(errors=1000))
        super().setUpClass()

    def test_500_queued_then_postfix_primary_gets_each_once(self):
        d = self.daemon
        rng = random.Random(3)
        run = "%x" % int(time.time())
        items, expect = [], {}
        n_other = 0
        for i in range(N_MESSAGES):
            msg, eight = _make_redelivery_message(i, run, rng)
            rcpts = ["user@example.test"]
            if i % 25 == 0:
                rcpts.append("other@example.test")
                n_other += 1
            items.append(dict(sender="a@b.test", rcpts=rcpts, msg=msg,
                              mail_params=" BODY=8BITMIME" if eight else ""))
            expect["%04d" % i] = (msg, rcpts)
        t0 = time.monotonic()
        qids = send_messages(d.port, items, sessions=4)
        t_intake = time.monotonic() - t0
        qid_of = {"%04d" % i: q for i, q in enumerate(qids)}

        # All 500 are queued (durably: counted by qtool with the daemon
        # stopped), and nothing can have been delivered: the port is closed.
        with d.stopped():
            self.assertEqual(d.queue_count(),
                             (N_MESSAGES, N_MESSAGES + n_other),
                             "queue before the primary comes back")

        pf = PostfixPrimary(self.pport, ["example.test"],
                            users=["other@example.test"])
        self.addCleanup(pf.stop)
        t_start = time.monotonic()
        pf.start()
        t_up = time.monotonic()

        def counts():
            return (len(pf.delivered("user@example.test")),
                    len(pf.delivered("other@example.test")))
        want = (N_MESSAGES, n_other)
        try:
            wait_until(lambda: counts() >= want, DRAIN_LIMIT + (t_up - t_start),
                       "all %d+%d messages in the primary's Maildirs" % want,
                       interval=0.1, detail=lambda: "got %r\n%s\n%s" % (
                           counts(), pf.log_tail(), d.log_tail()))
        finally:
            t_done = time.monotonic()
        # late duplicates would show up now
        time.sleep(1.5)
        self.assertEqual(counts(), want, "messages in the Maildirs (user, "
                         "other) after 1.5 s more: duplicates?")

        problems = []
        seen = {}
        token_re = re.compile(rb"bmx-redeliv-(\d{4})-" + run.encode())
        for box in ("user@example.test", "other@example.test"):
            for path, data in pf.delivered_messages(box):
                m = token_re.search(data)
                if not m:
                    problems.append("%s: no test token" % path)
                    continue
                key = m.group(1).decode()
                seen.setdefault((box, key), []).append(path)
                problems.extend(self._compare(box, key, data, expect[key][0],
                                              qid_of[key]))
        for i in range(N_MESSAGES):
            key = "%04d" % i
            for r in expect[key][1]:
                n = len(seen.get((r, key), []))
                if n != 1:
                    problems.append("message %s (%s) to %s delivered %d times"
                                    % (key, qid_of[key], r, n))
        if problems:
            self.fail("%d problem(s) in what the primary received, first 10:\n"
                      % len(problems) + "\n".join(problems[:10]))

        print("# postfix primary: intake of %d msgs %.1fs; all in Maildir "
              "%.1fs after it answered (postfix start took %.1fs)"
              % (N_MESSAGES, t_intake, t_done - t_up, t_up - t_start))
        with d.stopped():
            left = d.queue_count()
            if left != (0, 0):
                q = queue_list(harness.BUILD, d.spool, d.run_ids)
                states = {}
                for _, rl in q.values():
                    for st, _ in rl:
                        states[st] = states.get(st, 0) + 1
                self.fail("the backup's queue after the drain: (messages, "
                          "recipients) = %r, want (0, 0); recipient states: %r"
                          % (left, states))

    def _compare(self, box, key, data, orig, qid):
        """The Maildir file = Postfix's own header fields (Return-Path,
        X-Original-To, Delivered-To, its Received), then our Received, then
        the message exactly as sent (with LF line ends: Maildir)."""
        fields = list(header_fields(data))
        i = 0
        names = []
        while i < len(fields) and fields[i][0] in ("return-path", "x-original-to",
                                                   "delivered-to"):
            names.append(fields[i][0])
            i += 1
        where = "message %s (%s) in %s" % (key, qid, box)
        if names.count("delivered-to") != 1 or names.count("return-path") != 1:
            return ["%s: Postfix header fields at the top are %r" % (where, names)]
        if not data.startswith(b"Return-Path: <a@b.test>\n"):
            return ["%s: envelope sender not kept: %r" % (where, fields[0][1])]
        if i + 1 >= len(fields) or fields[i][0] != "received" \
                or b"(Postfix)" not in fields[i][1]:
            return ["%s: no Postfix Received after %r: %r"
                    % (where, names, data[:400])]
        ours = fields[i + 1]
        if ours[0] != "received" or (b"by " + HOSTNAME.encode()) not in ours[1]:
            return ["%s: our Received header is not next: %r"
                    % (where, ours[1][:300])]
        if qid.encode() not in ours[1]:
            return ["%s: our Received header does not name the queue id: %r"
                    % (where, ours[1])]
        rest = data[ours[2]:]
        want = lf(orig)
        if rest != want:
            n = next((k for k in range(min(len(rest), len(want)))
                      if rest[k] != want[k]), min(len(rest), len(want)))
            return ["%s: body differs from what was sent at byte %d (lengths "
                    "%d vs %d): got %r, want %r"
                    % (where, n, len(rest), len(want), rest[max(0, n - 40):n + 40],
                       want[max(0, n - 40):n + 40])]
        return []


# =============================================================================
# 2-6, 8. MX routing, outcomes, DSNs, lifetime, probe rate, log lines
# =============================================================================

def proc_cpu(pid):
    """User + system CPU seconds of process PID (all its threads)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


RETRY_MIN = 1
RETRY_MAX = 2
CONCURRENCY = 4
LIFETIME_SHORT = 5
SLOW_DATA_DELAY = 0.3        # seconds the slow primary takes per message
SENDER = "sender@sender.test"


class Redelivery(DaemonTestCase):

    TIMEOUT = 120

    @classmethod
    def setUpClass(cls):
        why = Dnsmasq.available()
        if why:
            raise unittest.SkipTest(why)
        started = []
        try:
            cls.mxport = free_port_on(["127.0.0.%d" % k for k in (1, 2, 3, 4)])
            (cls.p_mixed, cls.p_perm, cls.p_probe, cls.p_logs,
             cls.p_dead, cls.p_slow) = harness.free_ports(6)
            cls.dns = Dnsmasq([
                # mx.test: the primary at 10, ourselves (by address only:
                # the name is not our hostname) at 20, a worse MX at 30
                ("mx", "mx.test", "mx1.mx.test", 10),
                ("mx", "mx.test", "relay2.mx.test", 20),
                ("mx", "mx.test", "mx3.mx.test", 30),
                ("a", "mx1.mx.test", "127.0.0.2"),
                ("a", "relay2.mx.test", "127.0.0.1"),
                ("a", "mx3.mx.test", "127.0.0.4"),
                # alone.test: only ourselves
                ("mx", "alone.test", "relay2.alone.test", 10),
                ("a", "relay2.alone.test", "127.0.0.1"),
                # alone2.test: ourselves best, another host worse
                ("mx", "alone2.test", "relay2.alone.test", 10),
                ("mx", "alone2.test", "mx3.alone2.test", 20),
                ("a", "mx3.alone2.test", "127.0.0.4"),
                # amx.test: no MX, an A record (implicit MX)
                ("a", "amx.test", "127.0.0.2"),
                # the senders' domain, where DSNs go
                ("mx", "sender.test", "mx.sender.test", 10),
                ("a", "mx.sender.test", "127.0.0.3"),
            ])
            cls.dns.start()
            started.append(cls.dns)
            cls.self_guard = SinkPrimary(cls.mxport, host="127.0.0.1")
            started.append(cls.self_guard)
            cls.mx_primary = SinkPrimary(cls.mxport, host="127.0.0.2")
            started.append(cls.mx_primary)
            cls.dsn_sink = SinkPrimary(cls.mxport, host="127.0.0.3")
            started.append(cls.dsn_sink)
            cls.worse_mx = SinkPrimary(cls.mxport, host="127.0.0.4")
            started.append(cls.worse_mx)
            cls.mixed = SinkPrimary(cls.p_mixed)
            started.append(cls.mixed)
            cls.perm = SinkPrimary(cls.p_perm)
            started.append(cls.perm)
            cls.probe = SinkPrimary(cls.p_probe,
                                    greeting="421 4.3.2 primary down for the test")
            started.append(cls.probe)
            cls.logs = SinkPrimary(cls.p_logs)
            started.append(cls.logs)
            cls.slow = SinkPrimary(cls.p_slow, greeting="421 4.3.2 down for the test",
                                   data_delay=SLOW_DATA_DELAY)
            started.append(cls.slow)
            tmpl = TEMPLATE_HEAD + """
resolver = { "127.0.0.1:%(dns)d" }
queue { retry_min = %(rmin)ds  retry_max = %(rmax)ds  lifetime = 10m  delay_warning = 0
        concurrency = %(conc)d  mx_port = %(mxport)d }
domain "mx.test"     { mode = "relay" }
domain "amx.test"    { mode = "relay" }
domain "alone.test"   { mode = "relay" }
domain "alone2.test"  { mode = "relay" }
domain "mixed.test"  { mode = "relay"  primary = { "127.0.0.1:%(mixed)d" } }
domain "perm.test"   { mode = "relay"  primary = { "127.0.0.1:%(perm)d" } }
domain "expire.test" { mode = "relay"  primary = { "127.0.0.1:%(dead)d" }  lifetime = %(life)ds }
domain "probe.test"  { mode = "relay"  primary = { "127.0.0.1:%(probe)d" } }
domain "logs.test"   { mode = "relay"  primary = { "127.0.0.1:%(logs)d" } }
domain "slow.test"   { mode = "relay"  primary = { "127.0.0.1:%(slow)d" } }
@EXTRA@
""" % dict(dns=cls.dns.port, rmin=RETRY_MIN, rmax=RETRY_MAX, conc=CONCURRENCY,
           mxport=cls.mxport, mixed=cls.p_mixed, perm=cls.p_perm, dead=cls.p_dead,
           life=LIFETIME_SHORT, probe=cls.p_probe, logs=cls.p_logs,
           slow=cls.p_slow)
            cls.DAEMON_ARGS = dict(template=tmpl,
                                   limits=dict(errors=1000, recipients=10))
            super().setUpClass()
        except BaseException:
            for s in started:
                s.stop()
            raise
        for s in started:
            cls.addClassCleanup(s.stop)

    # --- helpers -----------------------------------------------------------
    def send(self, rcpts, sender=SENDER, subject=None, body=b"Hello.\r\n"):
        """One message; returns (qid, message bytes as sent)."""
        subject = subject or "%s %s" % (self.id().rsplit(".", 1)[-1], time.time())
        msg = harness.make_message(subject, body)
        c = self.session()
        qid = c.send_mail(sender=sender, rcpts=rcpts, msg=msg)
        c.quit()
        return qid, msg

    def queue_state(self):
        """qtool list (stops and restarts the shared daemon)."""
        with self.daemon.stopped():
            return queue_list(harness.BUILD, self.daemon.spool,
                              self.daemon.run_ids)

    def assert_gone(self, qids, what):
        """None of QIDS is in the queue any more (qtool list)."""
        q = self.queue_state()
        left = [(x, q[x][1]) for x in qids if x in q]
        if left:
            self.fail("%s: %d of %d message(s) still queued, e.g. %r"
                      % (what, len(left), len(qids), left[:3]))

    def check_relayed(self, tx, qid, msg, where):
        """TX's data = our Received header (naming QID) + MSG unchanged."""
        rec, rest = harness.split_received(tx.data)
        self.assertIn(("by " + HOSTNAME).encode(), rec, where)
        self.assertIn(qid.encode(), rec, where + ": Received names the qid")
        self.assertEqual(rest, msg, where + ": body as received")

    def dsns_for(self, rcpt_addr):
        """DSN transactions at the sender domain's MX listing RCPT_ADDR as a
        Final-Recipient."""
        out = []
        for tx in list(self.dsn_sink.transactions):
            if tx.data is None:
                continue
            if re.search(rb"(?im)^Final-Recipient:\s*rfc822;\s*<?"
                         + re.escape(rcpt_addr.encode()), tx.data):
                out.append(tx)
        return out

    def wait_line(self, rx, timeout, since=0):
        return self.daemon.wait_log(rx, timeout=timeout, since=since)

    # --- 2. MX selection -----------------------------------------------------
    def test_mx_self_at_20_primary_at_10_goes_to_primary(self):
        mark = self.daemon.log_mark()
        self_before = self.self_guard.connections
        worse_before = self.worse_mx.connections
        qid, msg = self.send(["user@mx.test"])
        txs = self.mx_primary.wait(lambda s: s.messages_to("user@mx.test"),
                                   RETRY_MAX + 8, "mail for user@mx.test at "
                                   "mx1.mx.test (127.0.0.2, pref 10)")
        self.assertEqual(len(txs), 1)
        self.check_relayed(txs[0], qid, msg, "mx.test via MX")
        self.assertEqual(txs[0].sender, SENDER)
        self.wait_line(sent_line_re(self.daemon.pid, qid, "user@mx.test",
                                    "mx1.mx.test", "127.0.0.2", self.mxport,
                                    r"2\.\d+\.\d+", "sent"), 5, since=mark)
        time.sleep(1)
        self.assertEqual(self.self_guard.connections - self_before, 0,
                         "connections to ourselves (127.0.0.1:mx_port)")
        self.assertEqual(self.worse_mx.connections - worse_before, 0,
                         "connections to the MX at pref 30, worse than us")
        self.assertEqual(len(self.mx_primary.messages_to("user@mx.test")), 1)

    def test_mx_without_mx_record_uses_a_record(self):
        qid, msg = self.send(["user@amx.test"])
        txs = self.mx_primary.wait(lambda s: s.messages_to("user@amx.test"),
                                   RETRY_MAX + 8, "mail for user@amx.test at "
                                   "its A record 127.0.0.2")
        self.check_relayed(txs[0], qid, msg, "amx.test via A")

    def test_mx_only_ourselves_stays_queued(self):
        mark = self.daemon.log_mark()
        self_before = self.self_guard.connections
        worse_before = self.worse_mx.connections
        qid1, _ = self.send(["user@alone.test"])
        qid2, _ = self.send(["user@alone2.test"])
        # the log says why: a mail loop (we are the best MX left)
        for qid, dom in ((qid1, "alone.test"), (qid2, "alone2.test")):
            self.wait_line(r"(?im)^.*(?:%s|%s).*(?:loop|myself|ourselves|"
                           r"itself|self|best MX).*$"
                           % (re.escape(qid), re.escape(dom)), RETRY_MAX + 5,
                           since=mark)
        time.sleep(2 * RETRY_MAX + 1)         # a few retry intervals
        log = self.daemon.log(mark)
        for qid in (qid1, qid2):
            self.assertNotRegex(log, r"%s: to=<[^>]*>, .*status=(sent|bounced)"
                                % re.escape(qid))
        self.assertEqual(self.self_guard.connections - self_before, 0,
                         "connections to ourselves (127.0.0.1:mx_port): %r"
                         % self.self_guard.commands[-10:])
        self.assertEqual(self.worse_mx.connections - worse_before, 0,
                         "connections to mx3.alone2.test (pref 20, worse than "
                         "our 10)")
        q = self.queue_state()
        for qid, rcpt in ((qid1, "user@alone.test"), (qid2, "user@alone2.test")):
            self.assertIn(qid, q, "message to %s left the queue" % rcpt)
            self.assertEqual(q[qid][1], [("deferred", rcpt)])

    # --- 3. 4xx for one recipient, 250 for the other ------------------------
    def test_outcome_4xx_one_rcpt_retried_until_accepted(self):
        mark = self.daemon.log_mark()
        self.mixed.set_rules([(r"^later@", "451 4.2.0 <later@mixed.test>: "
                               "mailbox busy, try later")])
        qid, msg = self.send(["now@mixed.test", "later@mixed.test"])
        txs = self.mixed.wait(lambda s: s.messages_to("now@mixed.test"),
                              RETRY_MAX + 8, "now@mixed.test delivered")
        self.check_relayed(txs[0], qid, msg, "now@mixed.test")
        self.assertEqual(txs[0].rcpts, ["now@mixed.test"])
        self.wait_line(sent_line_re(self.daemon.pid, qid, "later@mixed.test",
                                    "127.0.0.1", "127.0.0.1", self.p_mixed,
                                    r"4\.2\.0", "deferred"), 5, since=mark)
        # retried while it still answers 4xx (at least one more attempt)
        self.mixed.wait(lambda s: sum(1 for t in s.transactions
                                      for a, _ in t.refused
                                      if a == "later@mixed.test") >= 1 and
                        sum(1 for c, l in s.commands
                            if l.upper().startswith("RCPT TO:<LATER@")) >= 2,
                        3 * RETRY_MAX + 4, "a retry of later@mixed.test")
        self.assertEqual(len(self.mixed.messages_to("later@mixed.test")), 0)
        self.mixed.set_rules([])
        txs2 = self.mixed.wait(lambda s: s.messages_to("later@mixed.test"),
                               RETRY_MAX + 8, "later@mixed.test delivered once "
                               "the primary accepts it")
        self.assertEqual(txs2[0].rcpts, ["later@mixed.test"],
                         "the retry must not resend to now@mixed.test")
        self.check_relayed(txs2[0], qid, msg, "later@mixed.test")
        time.sleep(1)
        self.assertEqual(len(self.mixed.messages_to("now@mixed.test")), 1)
        self.assertEqual(len(self.mixed.messages_to("later@mixed.test")), 1)
        self.assertEqual(self.dsns_for("later@mixed.test"), [],
                         "a 4xx must not produce a DSN")
        self.assert_gone([qid], "after both recipients were delivered")

    # --- 4. 5xx for one of three: two delivered, one DSN ---------------------
    def test_outcome_5xx_one_of_three_dsn_to_sender(self):
        mark = self.daemon.log_mark()
        self.perm.set_rules([(r"^bad@", "550 5.1.1 <bad@perm.test>: Recipient "
                              "address rejected: User unknown")])
        subject = "five-hundred %s" % time.time()
        qid, msg = self.send(["ok1@perm.test", "bad@perm.test", "ok2@perm.test"],
                             subject=subject)
        txs = self.perm.wait(lambda s: s.messages_to("ok2@perm.test"),
                             RETRY_MAX + 8, "ok1/ok2@perm.test delivered")
        self.assertEqual(sorted(txs[0].rcpts), ["ok1@perm.test", "ok2@perm.test"],
                         "both accepted recipients in one transaction")
        self.check_relayed(txs[0], qid, msg, "perm.test")
        dsns = wait_until(lambda: self.dsns_for("bad@perm.test"), RETRY_MAX + 10,
                          "a DSN for bad@perm.test at the sender's MX "
                          "(mx.sender.test = 127.0.0.3:%d)" % self.mxport,
                          detail=lambda: "%r\n%s" % (self.dsn_sink.transactions,
                                                     self.daemon.log_tail()))
        self.assertEqual(len(dsns), 1)
        dsn = dsns[0]
        self.assertEqual(dsn.sender, "", "a DSN goes out with MAIL FROM:<>")
        self.assertEqual(dsn.rcpts, [SENDER])
        m, per_msg, per_rcpt, orig = parse_dsn(dsn.data)
        self.assertEqual(len(per_rcpt), 1, "only bad@perm.test failed: %r"
                         % [fields_of(b) for b in per_rcpt])
        f = fields_of(per_rcpt[0])
        self.assertEqual(addr_of(f.get("final-recipient", "")).lower(),
                         "bad@perm.test", f)
        self.assertEqual(f.get("action", "").lower(), "failed", f)
        self.assertRegex(f.get("status", ""), r"^5\.\d{1,3}\.\d{1,3}$", f)
        self.assertEqual(f.get("status"), "5.1.1", "the remote's enhanced code")
        self.assertIn("550", f.get("diagnostic-code", ""),
                      "Diagnostic-Code carries the remote reply: %r" % f)
        self.assertIn("reporting-mta", fields_of(per_msg))
        self.assertIn(subject, orig, "the DSN includes the original headers "
                      "(a text/rfc822-headers part); the DSN:\n%s"
                      % dsn.data[:4000].decode("utf-8", "replace"))
        self.assertEqual(m.get("To", "").count("sender@sender.test"), 1,
                         "DSN To: %r" % m.get("To"))
        time.sleep(1)
        self.assertEqual(len(self.dsns_for("bad@perm.test")), 1, "one DSN only")
        self.assertEqual(self.dsns_for("ok1@perm.test") +
                         self.dsns_for("ok2@perm.test"), [])
        self.assertEqual(len(self.perm.messages_to("ok1@perm.test")), 1)
        self.assert_gone([qid], "after 2 delivered and 1 bounced")

    # --- 5. lifetime ----------------------------------------------------------
    def test_outcome_lifetime_bounce_and_null_sender_dropped(self):
        mark = self.daemon.log_mark()
        t0 = time.monotonic()
        qid_a, _ = self.send(["u@expire.test"], subject="expire-a")
        qid_b, _ = self.send(["v@expire.test"], sender="", subject="expire-b")
        # the failed attempt is logged: per recipient (Postfix style:
        # relay=none, status=deferred) or per destination
        self.wait_line(r"(?:%s: to=<u@expire\.test>, relay=(?:none|127\.0\.0\.1"
                       r"\[127\.0\.0\.1\]:%d), delay=[\d.]+, (?:delays=[\d./]+, )?"
                       r"dsn=4\.\d+\.\d+, status=deferred \(.+\)|expire\.test.*"
                       r"127\.0\.0\.1\]?:%d.*(?i:refused))$"
                       % (re.escape(qid_a), self.p_dead, self.p_dead),
                       RETRY_MAX + 3, since=mark)
        dsns = wait_until(lambda: self.dsns_for("u@expire.test"),
                          LIFETIME_SHORT + RETRY_MAX + 10,
                          "a DSN for u@expire.test after lifetime (%ds)"
                          % LIFETIME_SHORT,
                          detail=lambda: self.daemon.log_tail())
        elapsed = time.monotonic() - t0
        self.assertGreaterEqual(elapsed, LIFETIME_SHORT - 0.5,
                                "bounced before the lifetime was over")
        m, _, per_rcpt, _ = parse_dsn(dsns[0].data)
        f = fields_of(per_rcpt[0])
        self.assertEqual(addr_of(f.get("final-recipient", "")), "u@expire.test")
        self.assertEqual(f.get("action", "").lower(), "failed", f)
        self.assertRegex(f.get("status", ""), r"^[45]\.\d{1,3}\.\d{1,3}$", f)
        self.assertEqual(dsns[0].sender, "")
        # Postfix says "status=expired, returned to sender" here
        self.wait_line(r"%s: to=<u@expire\.test>, .*status=(?:bounced|expired)\b"
                       r".*\(.+\)$" % re.escape(qid_a), 5, since=mark)
        # the null-sender message: logged and dropped, never bounced
        self.wait_line(r"(?im)^.*%s.*(drop|discard).*$" % re.escape(qid_b),
                       RETRY_MAX + 5, since=mark)
        time.sleep(1.5)
        self.assertEqual(self.dsns_for("v@expire.test"), [],
                         "a DSN for a null-sender message")
        for tx in self.dsn_sink.transactions:
            self.assertNotIn(b"expire-b", tx.data or b"",
                             "the null-sender message was bounced: %r" % tx)
        self.assert_gone([qid_a], "bounced after lifetime")
        self.assert_gone([qid_b], "null-sender message dropped after lifetime")

    # --- 6. probe rate while down, bounded drain once up ----------------------
    def test_probe_rate_bounded_while_down_then_drain(self):
        n = 200
        t0 = time.monotonic()
        c0 = self.probe.connections
        items = [dict(sender=SENDER, rcpts=["p%03d@probe.test" % i],
                      msg=harness.make_message("probe %d" % i))
                 for i in range(n)]
        qids = send_messages(self.daemon.port, items, sessions=2)
        t_queued = time.monotonic()
        window = 10.0
        time.sleep(window)
        t_end = time.monotonic()
        conns = self.probe.connections - c0
        in_window = self.probe.connections_since(t_queued)
        total_secs = t_end - t0
        # Destination backoff: at most one probe per retry_min (the shortest
        # interval), plus the first attempts made before the destination
        # was known to be down (at most `concurrency` connections at once).
        # One attempt per message would be >= 200.
        limit = math.ceil(total_secs / RETRY_MIN) + CONCURRENCY + 1
        self.assertLessEqual(
            conns, limit, "%d connections to a down primary in %.1fs for %d "
            "queued messages (intake %.1fs); destination backoff "
            "(retry_min=%ds, retry_max=%ds, concurrency=%d) allows <= %d"
            % (conns, total_secs, n, t_queued - t0, RETRY_MIN, RETRY_MAX,
               CONCURRENCY, limit))
        # and it does keep probing: at least one per retry_max
        self.assertGreaterEqual(in_window, int(window / RETRY_MAX) - 2,
                                "probes in %.0fs with retry_max=%ds"
                                % (window, RETRY_MAX))
        self.assertEqual(self.probe.transactions, [])
        print("# probe: %d connections in %.1fs (intake %.1fs, %d after it), "
              "limit %d" % (conns, total_secs, t_queued - t0, in_window, limit))

        # The primary answers again: everything drains, never over
        # `concurrency` connections, several messages per connection.
        c1 = self.probe.connections
        self.probe.max_open = 0
        self.probe.set_greeting("220 probe.test ESMTP")
        t_up = time.monotonic()
        self.probe.wait(lambda s: len(s.delivered()) >= n, RETRY_MAX + 15,
                        "all %d messages delivered after the primary came back"
                        % n)
        t_drained = time.monotonic() - t_up
        time.sleep(1)
        got = {}
        for r, tx in self.probe.delivered():
            got[r] = got.get(r, 0) + 1
        dup = {r: k for r, k in got.items() if k != 1}
        self.assertEqual(dup, {}, "recipients delivered more than once")
        self.assertEqual(len(got), n)
        self.assertLessEqual(self.probe.max_open, CONCURRENCY,
                             "open connections at once during the drain")
        drain_conns = self.probe.connections - c1
        self.assertLessEqual(drain_conns, n // 5,
                             "%d connections for %d messages: several messages "
                             "per connection expected" % (drain_conns, n))
        print("# drain: %d msgs in %.2fs over %d connections (max %d open)"
              % (n, t_drained, drain_conns, self.probe.max_open))
        self.assert_gone(qids, "after the drain")

    def test_slow_drain_leaves_the_daemon_idle(self):
        """While a slow primary drains the queue, the daemon waits: the
        recipients in flight must not come back from the schedule index
        (made due again when the destination came back) and the scheduler
        must not look again at once for what it cannot take yet. Either
        made it spin at 100% CPU."""
        n = 80
        items = [dict(sender=SENDER, rcpts=["s%03d@slow.test" % i],
                      msg=harness.make_message("slow %d" % i))
                 for i in range(n)]
        qids = send_messages(self.daemon.port, items, sessions=2)
        self.wait_line(r"destination slow\.test is down", 15)
        self.slow.set_greeting("220 slow.test ESMTP")
        self.wait_line(r"destination slow\.test is up again", RETRY_MAX + 10)
        self.slow.wait(lambda s: len(s.delivered()) >= CONCURRENCY, 10,
                       "the first deliveries to the slow primary")
        c0, t0 = proc_cpu(self.daemon.pid), time.monotonic()
        time.sleep(3)
        c1, t1 = proc_cpu(self.daemon.pid), time.monotonic()
        mid = len(self.slow.delivered())
        self.assertLess(mid, n, "the drain ended before the measurement did")
        self.assertLess(c1 - c0, 0.3 * (t1 - t0),
                        "daemon CPU %.2fs in %.1fs of a drain at %.1f msg/s"
                        % (c1 - c0, t1 - t0, CONCURRENCY / SLOW_DATA_DELAY))
        self.slow.wait(lambda s: len(s.delivered()) >= n, 60, "all delivered")
        time.sleep(0.5)
        got = [r for r, tx in self.slow.delivered()]
        self.assertEqual(sorted(got), sorted(set(got)), "delivered more than once")
        self.assertEqual(len(got), n)
        print("# slow drain: daemon CPU %.2fs in %.1fs, %d of %d delivered then"
              % (c1 - c0, t1 - t0, mid, n))
        self.assert_gone(qids, "after the slow drain")

    # --- 8. log lines ---------------------------------------------------------
    def test_log_lines_sent_deferred_bounced(self):
        mark = self.daemon.log_mark()
        self.logs.set_rules([
            (r"^tmp@", "451 4.3.0 <tmp@logs.test>: temporary trouble"),
            (r"^bad@", "550 5.1.1 <bad@logs.test>: no such user")])
        qid, _ = self.send(["ok@logs.test", "tmp@logs.test", "bad@logs.test"])
        pid = self.daemon.pid
        w = lambda rx: self.wait_line(rx, RETRY_MAX + 8, since=mark)
        m = w(sent_line_re(pid, qid, "ok@logs.test", "127.0.0.1", "127.0.0.1",
                           self.p_logs, r"2\.0\.0", "sent"))
        self.assertRegex(m.group(1), r"^250 2\.0\.0 Ok: queued")
        m = w(sent_line_re(pid, qid, "tmp@logs.test", "127.0.0.1", "127.0.0.1",
                           self.p_logs, r"4\.3\.0", "deferred"))
        self.assertIn("451 4.3.0 <tmp@logs.test>: temporary trouble", m.group(1))
        m = w(sent_line_re(pid, qid, "bad@logs.test", "127.0.0.1", "127.0.0.1",
                           self.p_logs, r"5\.1\.1", "bounced"))
        self.assertIn("550 5.1.1 <bad@logs.test>: no such user", m.group(1))
        # the DSN itself is logged as sent to the sender's MX
        w(r"^\S+ backupmx\[%d\]: [0-9A-Z]{16}: to=<%s>, relay=mx\.sender\.test"
          r"\[127\.0\.0\.3\]:%d, delay=[\d.]+, (?:delays=[\d./]+, )?"
          r"dsn=2\.\d+\.\d+, status=sent \(250 .*\)$"
          % (pid, re.escape(SENDER), self.mxport))
        # let tmp@ through so the queue is clean for the next test
        self.logs.set_rules([(r"^bad@", "550 5.1.1 no")])
        w(sent_line_re(pid, qid, "tmp@logs.test", "127.0.0.1", "127.0.0.1",
                       self.p_logs, r"2\.0\.0", "sent"))


# =============================================================================
# 7. ETRN
# =============================================================================

class Etrn(DaemonTestCase):
    """A backoff of an hour: only ETRN can explain a prompt delivery."""

    TIMEOUT = 60

    @classmethod
    def setUpClass(cls):
        cls.ports = dict(zip(("plain", "refused", "hash"), harness.free_ports(3)))
        tmpl = TEMPLATE_HEAD + """
queue { retry_min = 1h  retry_max = 2h  lifetime = 1d  delay_warning = 0  concurrency = 4 }
etrn { allow = { "127.0.0.1/32" } }
domain "etrn.test"     { mode = "relay"  primary = { "127.0.0.1:%(plain)d" } }
domain "refused.test"  { mode = "relay"  primary = { "127.0.0.1:%(refused)d" } }
domain "hash.test"     { mode = "relay"  primary = { "127.0.0.1:%(hash)d" } }
@EXTRA@
""" % cls.ports
        cls.DAEMON_ARGS = dict(template=tmpl, limits=dict(errors=1000))
        super().setUpClass()

    def queue_then_primary_up(self, domain, port):
        """Queues a message for DOMAIN while its primary is down, waits for
        the failed first attempt, starts the primary and checks that the
        backoff keeps the mail away from it. Returns (sink, qid)."""
        mark = self.daemon.log_mark()
        c = self.session()
        qid = c.send_mail(rcpts=("user@" + domain,))
        c.quit()
        # the first attempt failed (logged per recipient or per destination)
        self.daemon.wait_log(r"(?:%s: to=<user@%s>, .*status=deferred|%s.*:%d\b"
                             r".*(?i:refused))" % (re.escape(qid), re.escape(domain),
                                                   re.escape(domain), port),
                             5, since=mark)
        sink = SinkPrimary(port)
        self.addCleanup(sink.stop)
        time.sleep(1.5)
        self.assertEqual(sink.connections, 0, "delivery without ETRN despite "
                         "retry_min = 1h")
        return sink, qid

    def test_etrn_allowed_flushes_at_once(self):
        sink, qid = self.queue_then_primary_up("etrn.test", self.ports["plain"])
        c = self.connect()
        r = c.ehlo()
        self.assertIn("ETRN", [l.split()[0].upper() for l in r.lines if l],
                      "EHLO does not announce ETRN")
        t0 = time.monotonic()
        r = c.cmd("ETRN etrn.test")
        if r.code not in (250, 252, 253):
            c.fail("ETRN etrn.test from an allowed client: want 250 (RFC 1985 "
                   "also allows 252/253), got %r" % r.text)
        sink.wait(lambda s: s.messages_to("user@etrn.test"), 5,
                  "delivery after ETRN")
        print("# ETRN: delivered %.2fs after the command" % (time.monotonic() - t0))
        c.quit()

    def test_etrn_refused_from_other_client(self):
        sink, qid = self.queue_then_primary_up("refused.test",
                                               self.ports["refused"])
        c = self.connect(source="127.0.0.2")
        c.ehlo()
        r = c.cmd("ETRN refused.test")
        if r.code not in (458, 459):
            c.fail("ETRN from 127.0.0.2 (not in etrn.allow): want 458 or 459, "
                   "got %r" % r.text)
        r = c.cmd("ETRN #refused.test")
        if r.code not in (458, 459):
            c.fail("ETRN #... from 127.0.0.2: want 458 or 459, got %r" % r.text)
        c.quit()
        time.sleep(2)
        self.assertEqual(sink.connections, 0,
                         "a refused ETRN flushed the queue anyway")
        # the mail is still there, and an allowed ETRN does flush it
        c = self.session()
        c.cmd("ETRN refused.test")
        sink.wait(lambda s: s.messages_to("user@refused.test"), 5,
                  "delivery after an allowed ETRN")
        c.quit()

    def test_etrn_hash_form(self):
        sink, qid = self.queue_then_primary_up("hash.test", self.ports["hash"])
        c = self.session()
        r = c.cmd("ETRN #hash.test")
        if r.code not in (250, 252, 253):
            c.fail("ETRN #hash.test: want 250 (or 252/253), got %r" % r.text)
        sink.wait(lambda s: s.messages_to("user@hash.test"), 5,
                  "delivery after ETRN #hash.test")
        c.quit()


# ---------------------------------------------------------------------------
# 4. A big queue whose destination answers again: the loop keeps serving

class BigQueueComesBack(unittest.TestCase):
    """100,000 recipients deferred for an hour (qfill, daemon stopped), one
    more message that makes the daemon find the primary down. When the
    primary answers again every deferred recipient of it is made due,
    which rewrites each one: that must not stop the event loop, so SMTP
    sessions are served while it goes on. The daemon's own log shows the
    order: a session's "connect from" between the scan's start and its
    "N recipients due now", and N is every queued recipient."""

    N = 100000

    def test_sessions_served_while_recipients_are_made_due(self):
        qfill = os.path.join(harness.BUILD, "tests", "qfill")
        if not os.access(qfill, os.X_OK):
            self.skipTest("build/tests/qfill is not built")
        port = harness.free_ports(1)[0]
        sink = SinkPrimary(port, greeting="421 4.3.2 primary down for the test")
        self.addCleanup(sink.stop)
        tmpl = TEMPLATE_HEAD + """
queue { retry_min = 1s  retry_max = 1s  lifetime = 10d  delay_warning = 0 }
domain "big.test" { mode = "relay"  primary = { "127.0.0.1:%d" } }
""" % port
        d = harness.Daemon(template=tmpl)
        self.addCleanup(d.cleanup)
        ids = None
        if harness.is_root():
            import pwd
            pw = pwd.getpwnam("nobody")
            ids = (pw.pw_uid, pw.pw_gid)
        cp = harness.run_tool([qfill, "-b", "5000", "-t", "u@big.test", d.spool,
                               str(self.N)], timeout=300, ids=ids)
        self.assertIn(b"stored=%d" % self.N, cp.stdout)
        d.start()
        self.addCleanup(d.stop)

        c = harness.SMTPClient(d.port)
        c.banner()
        c.ehlo()
        c.send_mail(sender=SENDER, rcpts=["now@big.test"],
                    msg=harness.make_message("makes the daemon try big.test"))
        c.quit()
        wait_until(lambda: re.search(r"destination big\.test is down", d.log()),
                   30, "the daemon finds big.test down")

        sink.set_greeting("220 big.test ESMTP")
        served = 0
        deadline = time.monotonic() + 120
        while not re.search(r"destination big\.test is up again: \d+ recipients",
                            d.log()):
            self.assertLess(time.monotonic(), deadline, "no end of the scan in the log")
            s = harness.SMTPClient(d.port)
            s.banner()
            s.quit()
            served += 1
        log = d.log()
        start = log.find("destination big.test answers again")
        m = re.search(r"destination big\.test is up again: (\d+) recipients due now", log)
        self.assertGreaterEqual(start, 0, "no start of the scan in the log")
        self.assertGreaterEqual(int(m.group(1)), self.N, m.group(0))
        between = log[start:m.start()]
        self.assertIn("connect from", between,
                      "no SMTP session was served while %d recipients were made due "
                      "(%d sessions tried)" % (self.N, served))
        print("# %d recipients made due, %d SMTP sessions during the scan"
              % (int(m.group(1)), between.count("connect from")))
