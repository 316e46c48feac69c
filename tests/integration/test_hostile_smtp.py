"""Hostile SMTP clients (issue 9, item 4).

An open-relay battery (routing tricks, quoting, IP literals, case, dots,
null and postmaster addresses, IDN/UTF-8, lengths, lookalike domains),
SMTP smuggling pipelined in one packet, STARTTLS command injection,
slowloris, 1,000 connections from one address, a 10 MB command line, NUL
bytes, and a pipelining flood that never reads its replies.

Each attack gets its proper reply, nothing is queued for a domain that is
not ours (the queue is read back), the daemon stays up and its memory and
descriptors stay bounded, and a normal client keeps being served while the
attack runs: its full transaction time is printed as a '# ' note line and
only checked against a generous sanity limit.
"""

import contextlib
import os
import re
import resource
import selectors
import socket
import ssl
import statistics
import threading
import time

from harness import (DaemonTestCase, SMTPClient, dot_stuff,
                     make_message, queue_list, wait_until, BUILD)

SANE_TRANSACTION_S = 10.0       # a normal transaction during an attack
RSS_BUDGET_KB = 50 * 1024       # growth allowed during a memory attack


def note(text):
    print("# hostile: " + text, flush=True)


# --- looking at the daemon process ------------------------------------------

def proc_status(pid):
    """Numeric fields (kB) of /proc/PID/status, e.g. VmRSS, VmHWM."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            parts = v.split()
            if parts and parts[0].isdigit():
                out[k] = int(parts[0])
    return out


def rss_kb(pid):
    return proc_status(pid)["VmRSS"]


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def fd_listing(pid):
    """What the daemon's descriptors point at (for failure messages)."""
    out = []
    for fd in sorted(os.listdir("/proc/%d/fd" % pid), key=int):
        with contextlib.suppress(OSError):
            out.append("%s -> %s" % (fd, os.readlink("/proc/%d/fd/%s" % (pid, fd))))
    return "\n".join(out)


def settled_fd_count(pid, port):
    """The daemon's descriptor count at rest, after one normal transaction
    (which also opens whatever a queued message makes the daemon keep:
    the resolver, a delivery attempt) and a short pause."""
    timed_transaction(port, subject="warm-up")
    time.sleep(0.5)
    return fd_count(pid)


def wait_fds_back(pid, base, timeout=10, slack=2):
    """Waits until the daemon holds at most BASE + SLACK descriptors (the
    slack: a delivery attempt or resolver query started meanwhile)."""
    wait_until(lambda: fd_count(pid) <= base + slack, timeout,
               "daemon descriptors back to %d (+%d)" % (base, slack),
               detail=lambda: "now %d:\n%s" % (fd_count(pid), fd_listing(pid)))


class PeakRss:
    """The daemon's peak RSS over a block: the kernel's VmHWM after
    resetting it (clear_refs 5), and our own samples as a fallback."""

    def __init__(self, pid):
        self.pid = pid
        self.before = rss_kb(pid)
        self.peak = self.before
        self.hwm_reset = False
        with contextlib.suppress(OSError):
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")
            self.hwm_reset = True
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()

    def _sample(self):
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self.peak, rss_kb(self.pid))
            self._stop.wait(0.02)

    def finish(self):
        self._stop.set()
        self._t.join(5)
        st = proc_status(self.pid)
        self.peak = max(self.peak, st["VmRSS"])
        if self.hwm_reset:
            self.peak = max(self.peak, st.get("VmHWM", 0))
        self.after = st["VmRSS"]
        return self.peak - self.before


# --- a normal client, timed, while an attack runs -----------------------------

def timed_transaction(port, source=None, subject="probe"):
    """Connect, EHLO, one message, QUIT; returns the seconds it took."""
    t0 = time.monotonic()
    c = SMTPClient(port, timeout=SANE_TRANSACTION_S + 5, source=source)
    try:
        c.banner()
        c.ehlo()
        c.send_mail(msg=make_message(subject))
        c.check("QUIT", 221)
    finally:
        c.close()
    return time.monotonic() - t0


class LatencyProbe:
    """Runs normal transactions back to back (with a short pause) in a
    thread until stopped; keeps each one's duration and any error."""

    def __init__(self, port, source=None, pause=0.2):
        self.port, self.source, self.pause = port, source, pause
        self.times = []
        self.errors = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.times.append(timed_transaction(self.port, self.source))
            except BaseException as e:      # reported by check()
                self.errors.append(e)
            self._stop.wait(self.pause)

    def stop(self):
        self._stop.set()
        self._t.join(SANE_TRANSACTION_S + 10)

    def check(self, testcase, what):
        """Stops, fails on an error or a transaction over the sanity limit,
        prints the latencies as a note and returns them."""
        self.stop()
        if self.errors:
            raise AssertionError("normal client failed during %s: %s"
                                 % (what, self.errors[0]))
        testcase.assertTrue(self.times, "no normal transaction completed "
                            "during %s" % what)
        testcase.assertLess(max(self.times), SANE_TRANSACTION_S,
                            "a normal transaction during %s took %.2fs"
                            % (what, max(self.times)))
        note("normal client during %s: %d transactions, median %.0f ms, "
             "max %.0f ms" % (what, len(self.times),
                              statistics.median(self.times) * 1000,
                              max(self.times) * 1000))
        return self.times


# --- the open-relay battery -----------------------------------------------------

OURS = 250, "2.1.5"
RELAY = 550, "5.7.1"            # not one of our domains / sender routing
SYNTAX = 501, "5.1.3"           # not a valid (or too long) path
NOPATH = 501, "5.5.4"
NEED_UTF8 = 553, "5.6.7"

LONG_LOCAL = "l" * 64
HUGE_DOMAIN = ".".join(["d" * 50] * 5) + ".sub.test"   # 264 octets

# (label, RCPT TO argument, (code, enhanced code), SMTPUTF8 on MAIL,
#  address it must be queued as when accepted)
BATTERY = [
    # source routes (RFC 5321 4.1.1.3 / appendix C)
    ("source route two hops", "<@relay.test,@other.test:user@example.test>", RELAY),
    ("source route via us", "<@example.test:user@other.test>", RELAY),
    ("source route to us", "<@other.test:user@example.test>", RELAY),
    # %-hack
    ("%-hack", "<user%other.test@example.test>", RELAY),
    ("%-hack twice", "<user%other.test%example.test@example.test>", RELAY),
    ("%-hack on a listed domain", "<alice%other.test@listed.test>", RELAY),
    ("%-hack on a covered subdomain", "<user%other.test@a.sub.test>", RELAY),
    ("%-hack to a literal", "<user%[192.0.2.1]@example.test>", SYNTAX),
    # !-paths (UUCP)
    ("!-path", "<other.test!user@example.test>", RELAY),
    ("!-path two hops", "<other.test!relay.test!user@example.test>", RELAY),
    # quoted local parts that hide a route
    ("quoted @", '<"user@other.test"@example.test>', RELAY),
    ("quoted %", '<"user%other.test"@example.test>', RELAY),
    ("quoted !", '<"other.test!user"@example.test>', RELAY),
    ("quoted escaped @", '<"user\\@other.test"@example.test>', RELAY),
    ("quoted escaped quote then @", '<"user\\"@other.test"@example.test>', RELAY),
    ("second @", "<user@other.test@example.test>", RELAY),
    # plain foreign domains, literals, lookalikes
    ("foreign domain", "<user@other.test>", RELAY),
    ("IPv4 literal loopback", "<user@[127.0.0.1]>", RELAY),
    ("IPv4 literal", "<user@[192.0.2.1]>", RELAY),
    ("IPv6 literal loopback", "<user@[IPv6:::1]>", RELAY),
    ("IPv4-mapped IPv6 literal", "<user@[IPv6:::ffff:127.0.0.1]>", RELAY),
    ("general literal naming our domain", "<user@[example.test]>", RELAY),
    ("dotted quad without brackets", "<user@127.0.0.1>", RELAY),
    ("our domain as a prefix", "<user@example.test.evil.example>", RELAY),
    ("our domain as a suffix", "<user@evilexample.test>", RELAY),
    ("our domain plus hyphen", "<user@example.test-evil.example>", RELAY),
    ("subdomain, subdomains=false", "<user@sub.example.test>", RELAY),
    ("deep subdomain, subdomains=false", "<user@a.b.example.test>", RELAY),
    ("prefix of a subdomains=true domain", "<user@sub.test.evil.example>", RELAY),
    ("suffix lookalike of sub.test", "<user@xsub.test>", RELAY),
    ("punycode lookalike", "<user@xn--exmple-cua.test>", RELAY),
    ("localhost", "<user@localhost>", RELAY),
    ("our own host name", "<user@mx2.example.test>", RELAY),
    ("postmaster of a foreign domain", "<postmaster@other.test>", RELAY),
    ("IDN lookalike (umlaut)", "<user@ex\u00e4mple.test>", RELAY, True),
    ("IDN lookalike (Cyrillic e)", "<user@exampl\u0435.test>", RELAY, True),
    ("fullwidth full stop", "<user@example\uff0etest>", RELAY, True),
    # a U-label of a domain configured as its A-label: no IDNA mapping is
    # done, so it is refused (safe; a sender retries with the A-label)
    ("U-label of our A-label domain", "<user@b\u00fccher.test>", RELAY, True),
    ("IDN without SMTPUTF8", "<user@b\u00fccher.test>", NEED_UTF8),
    ("UTF-8 local part without SMTPUTF8", "<\u00fcser@example.test>", NEED_UTF8),
    # syntax: refused before any policy
    ("null path as RCPT", "<>", SYNTAX),
    ("two trailing dots", "<user@example.test..>", SYNTAX),
    ("double dot in domain", "<user@example..test>", SYNTAX),
    ("double dot in local part", "<user..name@example.test>", SYNTAX),
    ("leading dot in local part", "<.user@example.test>", SYNTAX),
    ("trailing dot in local part", "<user.@example.test>", SYNTAX),
    ("space in local part", "<user @example.test>", SYNTAX),
    ("space after @", "<user@ example.test>", SYNTAX),
    ("space before >", "<user@example.test >", SYNTAX),
    ("unquoted backslash", "<user\\@other.test@example.test>", SYNTAX),
    ("unterminated quote", '<"user@example.test>', SYNTAX),
    ("local part of 65 octets", "<%s@example.test>" % ("l" * 65), SYNTAX),
    ("label of 64 octets", "<user@%s.example.test>" % ("a" * 64), SYNTAX),
    ("domain over 255 octets", "<user@%s>" % HUGE_DOMAIN, SYNTAX),
    ("port after the domain", "<user@example.test:25>", SYNTAX),
    ("double brackets", "<<user@example.test>>", SYNTAX),
    ("% after the domain", "<user@example.test%other.test>", SYNTAX),
    ("comma after the domain", "<user@example.test,other.test>", SYNTAX),
    ("empty local part", "<@example.test>", SYNTAX),
    ("no @ at all", "<example.test>", SYNTAX),
    ("postmaster with a space", "<postmaster >", SYNTAX),
    ("leading hyphen in domain", "<user@-example.test>", SYNTAX),
    ("overlong UTF-8 dot", b"<user@example\xc0\xaetest>", SYNTAX, True),
    ("invalid UTF-8", b"<user@ex\xffample.test>", SYNTAX, True),
    ("no angle brackets", "user@example.test", NOPATH),
    ("tab before the path", "\t<user@example.test>", NOPATH),
    # legitimately ours: accepted and queued as shown
    ("plain", "<user@example.test>", OURS, False, "user@example.test"),
    ("upper-case domain", "<User@EXAMPLE.TEST>", OURS, False, "User@example.test"),
    ("trailing dot", "<user@example.test.>", OURS, False, "user@example.test"),
    ("bare postmaster", "<postmaster>", OURS, False, "postmaster@example.test"),
    ("bare POSTMASTER", "<POSTMASTER>", OURS, False, "postmaster@example.test"),
    ("postmaster with domain", "<PostMaster@Example.Test>", OURS, False,
     "PostMaster@example.test"),
    ("quoted local part with space", '<"user name"@example.test>', OURS, False,
     '"user name"@example.test'),
    ("harmless backslash escape", '<"us\\er"@example.test>', OURS, False,
     '"us\\er"@example.test'),
    ("UTF-8 local part with SMTPUTF8", "<\u00fcser@example.test>", OURS, True,
     "\u00fcser@example.test"),
    ("covered subdomain", "<user@a.sub.test>", OURS, False, "user@a.sub.test"),
    ("space after the colon", " <user@example.test>", OURS, False,
     "user@example.test"),
    ("local part of 64 octets", "<%s@example.test>" % LONG_LOCAL, OURS, False,
     LONG_LOCAL + "@example.test"),
    ("listed, upper case, trailing dot", "<alice@LISTED.TEST.>", OURS, False,
     "alice@listed.test"),
    ("punycode domain we serve", "<user@XN--BCHER-KVA.TEST>", OURS, False,
     "user@xn--bcher-kva.test"),
]

OUR_DOMAIN_RE = re.compile(
    r"^[^@%!]+@(example\.test|listed\.test|xn--bcher-kva\.test|"
    r"(?:[a-z0-9-]+\.)*sub\.test)$")

IDN_DOMAIN = ('domain "xn--bcher-kva.test" { mode = "relay"  '
              'primary = { "127.0.0.1:1" } }')


class OpenRelay(DaemonTestCase):
    DAEMON_ARGS = dict(limits=dict(errors=1000, recipients=1000),
                       extra=IDN_DOMAIN)

    def try_relay(self, label, arg, want, utf8=False):
        """One session: MAIL, the RCPT under test and, whenever the RCPT
        is accepted (expected or not), a whole message, so that a policy
        hole shows up in the queue as well as in the reply."""
        c = self.session()
        c.check("MAIL FROM:<a@b.test>%s" % (" SMTPUTF8" if utf8 else ""),
                250, "2.1.0")
        line = arg.encode("utf-8") if isinstance(arg, str) else arg
        r = c.cmd(b"RCPT TO:" + line)
        qid = None
        if r.code == 250:
            c.check("DATA", 354)
            c.send(dot_stuff(make_message(label)))
            qid = c.expect(c.reply(), 250, "2.0.0").qid()
        c.quit()
        self.assertEqual((r.code, r.enh), want,
                         "%s: RCPT TO:%r got %r" % (label, arg, r.text))
        return qid

    def test_open_relay_battery(self):
        self.assertGreaterEqual(len(BATTERY), 30)
        before = self.queued()
        expected = {}               # qid -> the address it must carry
        for case in BATTERY:
            label, arg, want = case[:3]
            utf8 = case[3] if len(case) > 3 else False
            with self.subTest(case=label):
                qid = self.try_relay(label, arg, want, utf8)
                if qid is not None:
                    expected[qid] = case[4] if len(case) > 4 else "?"
        self.assertIn("reject: RCPT from unknown[127.0.0.1]: 550 5.7.1 "
                      "<user@other.test>: Relay access denied; from=<a@b.test> "
                      "to=<user@other.test> proto=ESMTP "
                      "helo=<client.example.test>", self.daemon.log())
        after = self.queued()
        new = {q: v for q, v in after.items() if q not in before}
        got = {q: [a for _, a in rcpts] for q, (_, rcpts) in new.items()}
        self.assertEqual(got, {q: [a] for q, a in expected.items()},
                         "the queue holds other recipients than the "
                         "accepted cases")
        for q, addrs in got.items():
            for a in addrs:
                self.assertRegex(a.lower(), OUR_DOMAIN_RE,
                                 "queued for a foreign domain or with a route")
        note("open relay: %d address forms, %d accepted as ours, %d refused"
             % (len(BATTERY), len(expected), len(BATTERY) - len(expected)))

    def test_many_routes_in_one_transaction(self):
        """Refused routes mixed with a good recipient: only the good one is
        queued, and the refusals do not poison the transaction."""
        before = self.queued()
        c = self.session()
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        for case in BATTERY[:16]:          # routing forms, all ASCII
            arg, want = case[1], case[2]
            r = c.cmd("RCPT TO:" + arg)
            self.assertEqual((r.code, r.enh), want, c.format_transcript())
        c.check("RCPT TO:<user@example.test>", 250, "2.1.5")
        c.check("RCPT TO:<user%other.test@example.test>", 550, "5.7.1")
        c.check("DATA", 354)
        c.send(dot_stuff(make_message("mixed")))
        qid = c.expect(c.reply(), 250, "2.0.0").qid()
        c.quit()
        after = self.queued()
        self.assertEqual(set(after) - set(before), {qid})
        self.assertEqual([a for _, a in after[qid][1]], ["user@example.test"])

    def queued(self):
        with self.daemon.stopped():
            return queue_list(BUILD, self.daemon.spool, ids=self.daemon.run_ids)


# --- SMTP smuggling, pipelined in one packet --------------------------------------

SMUGGLED = (b"MAIL FROM:<smuggled@b.test>\r\n"
            b"RCPT TO:<victim@example.test>\r\n"
            b"DATA\r\n"
            b"From: <smuggled@b.test>\r\nSubject: smuggled\r\n\r\n"
            b"smuggled body\r\n")

# Published fake end-of-data forms (SEC Consult 2023 and follow-ups), plus
# NUL forms that a NUL-stripping next hop would read as <CRLF>.<CRLF>.
FAKE_ENDS = [
    ("LF.CRLF", b"\n.\r\n"),
    ("CR.CR", b"\r.\r"),
    ("LF.LF", b"\n.\n"),
    ("CRLF.LF", b"\r\n.\n"),
    ("CRLF.CR", b"\r\n.\r"),
    ("CR.CRLF", b"\r.\r\n"),
    ("CR.LF", b"\r.\n"),
    ("LF.CR", b"\n.\r"),
    ("CRLF NUL.CRLF", b"\r\n\x00.\r\n"),
    ("CRLF.NUL CRLF", b"\r\n.\x00\r\n"),
    ("CRLF.CR CRLF", b"\r\n.\r\r\n"),
]


class Smuggling(DaemonTestCase):
    DAEMON_ARGS = dict(limits=dict(errors=100))

    def test_smuggling_whole_transaction_in_one_packet(self):
        """MAIL, RCPT, DATA, carrier, fake end, a complete smuggled
        transaction, the real end and QUIT in one write: exactly one
        message is refused, nothing is answered for the smuggled commands,
        and nothing is queued."""
        before = self.queue_count()
        for name, fake in FAKE_ENDS:
            with self.subTest(variant=name):
                c = self.session()
                c.send(b"MAIL FROM:<carrier@b.test>\r\n"
                       b"RCPT TO:<user@example.test>\r\n"
                       b"DATA\r\n"
                       b"From: <carrier@b.test>\r\nSubject: carrier\r\n\r\n"
                       b"carrier body" + fake + SMUGGLED +
                       b".\r\nQUIT\r\n")
                codes = [(r.code, r.enh) for r in
                         (c.reply() for _ in range(5))]
                self.assertEqual(codes, [(250, "2.1.0"), (250, "2.1.5"),
                                         (354, None), (554, "5.6.0"),
                                         (221, "2.0.0")],
                                 c.format_transcript())
                c.assert_closed(5)
        self.assertEqual(self.queue_count(), before,
                         "a smuggling attempt left something in the queue")
        self.assertNotIn("from=<smuggled@b.test>, size", self.daemon.log())

    def test_pipelined_second_message_after_real_end(self):
        """Control: a real <CRLF>.<CRLF> followed by a second transaction in
        the same packet is legitimate pipelining, and each message is cut
        exactly at its own end (neither body holds the other)."""
        c = self.session()
        first = make_message("first", body=b"first body\r\n")
        second = make_message("second", body=b"second body\r\n")
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<user@example.test>\r\n"
               b"DATA\r\n" + dot_stuff(first) +
               b"MAIL FROM:<a@b.test>\r\nRCPT TO:<user@example.test>\r\n"
               b"DATA\r\n" + dot_stuff(second) + b"QUIT\r\n")
        replies = [c.reply() for _ in range(7)]
        self.assertEqual([r.code for r in replies],
                         [250, 250, 354, 250, 250, 250, 354],
                         c.format_transcript())
        q1 = replies[3].qid()
        q2 = c.expect(c.reply(), 250, "2.0.0").qid()
        c.expect(c.reply(), 221)
        bodies = self.queue_bodies([q1, q2])
        self.assertTrue(bodies[q1].endswith(first), bodies[q1][-200:])
        self.assertTrue(bodies[q2].endswith(second), bodies[q2][-200:])
        self.assertNotIn(b"second body", bodies[q1])
        self.assertNotIn(b"first body", bodies[q2])


# --- STARTTLS command injection ---------------------------------------------------

INJECTED = (b"MAIL FROM:<injected@b.test>\r\n"
            b"RCPT TO:<user@example.test>\r\n"
            b"DATA\r\n"
            b"Subject: injected\r\n\r\ninjected\r\n.\r\n")


class StartTlsInjection(DaemonTestCase):
    DAEMON_ARGS = dict(tls=True, limits=dict(errors=20))

    def test_pipelined_transaction_behind_starttls(self):
        """EHLO, STARTTLS and a whole plaintext transaction in one packet
        (CVE-2011-0411 style): none of it may run inside TLS."""
        before = self.queue_count()
        c = self.connect()
        c.send(b"EHLO client.example.test\r\nSTARTTLS\r\n" + INJECTED +
               b"QUIT\r\n")
        c.expect(c.reply(), 250, None, "STARTTLS")
        c.expect(c.reply(), 220, "2.0.0")
        if c.buf:
            c.fail("plaintext data after the STARTTLS reply: %r" % c.buf)
        c.tls_handshake()
        c.quiet(0.3)                     # no replies to the injected lines
        c.ehlo()
        c.check("RCPT TO:<user@example.test>", 503, "5.5.1")
        c.check("DATA", 503, "5.5.1")
        c.check("NOOP", 250)             # the injected QUIT did not run
        c.quit()
        self.assertEqual(self.queue_count(), before)
        self.assertNotIn("injected@b.test", self.daemon.log())

    def test_plaintext_after_starttls_reply(self):
        """Commands sent in plaintext after the 220 (where the ClientHello
        belongs) end the connection; no plaintext 250 comes back."""
        c = self.session()
        c.check("STARTTLS", 220, "2.0.0")
        c.send(INJECTED + b"QUIT\r\n")
        rest = c.read_until_close(10)
        self.assertNotIn(b"250", rest, c.format_transcript())
        self.assertNotIn(b"354", rest, c.format_transcript())
        c2 = self.session()
        c2.starttls()
        c2.ehlo()
        c2.check("RCPT TO:<user@example.test>", 503, "5.5.1")
        c2.quit()
        self.assertNotIn("injected@b.test", self.daemon.log())

    def test_injection_inside_tls_after_starttls_refused(self):
        """A second STARTTLS inside TLS is refused and what is pipelined
        behind it is answered normally, inside TLS, in order."""
        c = self.session()
        c.starttls()
        c.ehlo()
        c.send(b"STARTTLS\r\nMAIL FROM:<a@b.test>\r\nRSET\r\n")
        self.assertEqual(c.reply().code // 100, 5, c.format_transcript())
        c.expect(c.reply(), 250, "2.1.0")
        c.expect(c.reply(), 250, "2.0.0")
        c.quit()


# --- slowloris ------------------------------------------------------------------

def drip(socks, data, interval, deadline):
    """Sends DATA one byte per INTERVAL to every socket in SOCKS until the
    server answers or closes; returns {sock: (seconds, bytes received)}
    measured from the first byte sent. Sockets still open at DEADLINE
    (seconds) get (None, what they received)."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    t0 = time.monotonic()
    got = {s: b"" for s in socks}
    done = {}
    sent = 0
    next_send = t0
    while len(done) < len(socks) and time.monotonic() - t0 < deadline:
        now = time.monotonic()
        if now >= next_send and sent < len(data):
            for s in socks:
                if s not in done:
                    with contextlib.suppress(OSError):
                        s.send(data[sent:sent + 1])
            sent += 1
            next_send += interval
        for key, _ in sel.select(max(0.0, next_send - time.monotonic())):
            s = key.fileobj
            try:
                chunk = s.recv(4096)
            except OSError:
                chunk = b""
            got[s] += chunk
            if not chunk:               # answered and closed
                done[s] = time.monotonic() - t0
                sel.unregister(s)
    sel.close()
    return {s: (done.get(s), got[s]) for s in socks}


class Slowloris(DaemonTestCase):
    DAEMON_ARGS = dict(limits=dict(command_timeout="3s", data_timeout="4s",
                                   connections_per_ip=40, errors=20))
    N = 10

    def greeted_socket(self, ehlo=True):
        c = self.session(ehlo=ehlo)
        c.sock.settimeout(None)
        return c

    def test_slowloris_commands(self):
        """Ten clients send a command line at one byte per second: each is
        dropped with 421 4.4.2 once the line has taken command_timeout (3s),
        long before the line is complete; a normal client is served."""
        line = b"MAIL FROM:<slow.loris@b.test>\r\n"          # 31 s at 1 B/s
        clients = [self.greeted_socket() for _ in range(self.N)]
        with LatencyProbe(self.daemon.port) as probe:
            res = drip([c.sock for c in clients], line, 1.0, deadline=15)
        probe.check(self, "slowloris (%d clients, 1 byte/s)" % self.N)
        times = []
        for c in clients:
            secs, data = res[c.sock]
            self.assertIsNotNone(secs, "slow client not dropped within 15s; "
                                 "received %r" % data)
            self.assertRegex(data, rb"^421 4\.4\.2 .*timeout",
                             "slow client got %r" % data)
            self.assertNotIn(b"250", data)
            times.append(secs)
        self.assertGreaterEqual(min(times), 2.5, "dropped before the timeout")
        self.assertLess(max(times), 8, "command_timeout = 3s took too long")
        self.daemon.wait_log(r"timeout after \S+ from unknown\[127\.0\.0\.1\]")
        note("slowloris: %d clients dropped after %.1f-%.1f s (421 4.4.2)"
             % (self.N, min(times), max(times)))

    def test_slowloris_before_helo(self):
        """The same before any command: the greeting line itself."""
        c = self.greeted_socket(ehlo=False)
        secs, data = drip([c.sock], b"EHLO slow.example.test\r\n", 1.0, 15)[c.sock]
        self.assertIsNotNone(secs, "not dropped within 15s: %r" % data)
        self.assertRegex(data, rb"^421 4\.4\.2 ")
        self.assertLess(secs, 8)

    def test_slowloris_data(self):
        """A message dripped at one byte per second is cut off with
        421 4.4.2 once a line has taken data_timeout (4s); nothing queued."""
        before = self.queue_count()
        c = self.session()
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        c.check("RCPT TO:<user@example.test>", 250, "2.1.5")
        c.check("DATA", 354)
        c.sock.settimeout(None)
        secs, data = drip([c.sock], b"Subject: one byte at a time\r\n\r\n",
                          1.0, 15)[c.sock]
        self.assertIsNotNone(secs, "not dropped within 15s: %r" % data)
        self.assertRegex(data, rb"^421 4\.4\.2 ")
        self.assertGreaterEqual(secs, 3.5)
        self.assertLess(secs, 9)
        self.assertEqual(self.queue_count(), before)

    def test_slow_but_complete_lines_are_fine(self):
        """Control: a client that pauses between whole commands (less than
        command_timeout each) is not dropped."""
        c = self.session()
        for _ in range(3):
            time.sleep(1.5)
            c.check("NOOP", 250)
        c.send(b"NO")
        time.sleep(1.5)
        c.send(b"OP\r\n")
        c.expect(c.reply(), 250)
        c.quit()


# --- many connections from one address ------------------------------------------------

class ThousandConnections(DaemonTestCase):
    # a long command_timeout: the 20 admitted sessions stay idle meanwhile
    DAEMON_ARGS = dict(limits=dict(connections=2000, connections_per_ip=20,
                                   command_timeout="60s"))
    TIMEOUT = 100

    CHURN_S = 3.0

    def test_1000_connections_from_one_ip(self):
        """1,000 connections from 127.0.0.1 (per-IP limit 20): 20 banners,
        980 x 421 4.7.0; then, holding them all, refused ones are re-opened
        for a few seconds. The refused sessions hold no descriptors, a
        client from another address is served throughout, and once all are
        closed the descriptors are back and 127.0.0.1 is admitted again."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 1500:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        pid = self.daemon.pid
        fds_before = settled_fd_count(pid, self.daemon.port)
        socks = []
        try:
            with LatencyProbe(self.daemon.port, source="127.0.0.2") as probe:
                t0 = time.monotonic()
                socks = self.connect_many(1000)
                firsts = self.first_lines(socks, timeout=30)
                took = time.monotonic() - t0
                fds_held = self.settled_while_held(pid, fds_before)
                refused_socks = [s for s, l in zip(socks, firsts)
                                 if l.startswith(b"421 ")]
                churn = self.churn(socks, refused_socks, self.CHURN_S)
                fds_churn = self.settled_while_held(pid, fds_before)
            probe.check(self, "1,000 connections from one IP")
            banners = sum(1 for l in firsts if l.startswith(b"220 "))
            other = [l for l in firsts if not l.startswith((b"220 ", b"421 "))]
            self.assertEqual(banners, 20, "per-IP limit is 20")
            self.assertEqual(len(refused_socks), 980)
            self.assertEqual(other, [])
            self.assertRegex(firsts[-1], rb"^421 4\.7\.0 .*too many connections "
                             rb"from 127\.0\.0\.1\r\n$")
            self.assertEqual(set(churn), {b"421"}, "while 20 are admitted, "
                             "every new connection from 127.0.0.1 gets 421")
        finally:
            for s in socks:
                s.close()
        wait_fds_back(pid, fds_before)
        t = timed_transaction(self.daemon.port)
        note("1,000 connections: opened and answered in %.1f s, then %d more "
             "refused in %.0f s; daemon fds %d before, %d/%d while held, %d "
             "after; 127.0.0.1 transaction afterwards %.0f ms"
             % (took, len(churn), self.CHURN_S, fds_before, fds_held,
                fds_churn, fd_count(pid), t * 1000))

    @staticmethod
    def settled_while_held(pid, base):
        """The refused sessions end while their clients still hold them:
        only the 20 admitted ones keep a descriptor. (libevent closes a
        freed connection at the end of its loop pass, so right after a
        burst a few hundred closes may still be pending.)"""
        wait_until(lambda: fd_count(pid) <= base + 20 + 3, 5,
                   "daemon releases the descriptors of refused clients",
                   detail=lambda: "now %d, base %d:\n%s"
                   % (fd_count(pid), base, fd_listing(pid)))
        return fd_count(pid)

    def connect_many(self, n):
        return [socket.create_connection(("127.0.0.1", self.daemon.port),
                                         timeout=10) for _ in range(n)]

    def churn(self, socks, refused, seconds, batch=100, pause=0.1):
        """Closes and re-opens refused connections in batches for SECONDS
        (SOCKS keeps every open one for the final close); returns the reply
        code of each re-opened one. The pause keeps it near 1,000/s, which
        does not use up the machine's ephemeral ports (TIME_WAIT)."""
        codes = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for s in refused[:batch]:
                s.close()
                socks.remove(s)
            del refused[:batch]
            fresh = self.connect_many(batch)
            socks.extend(fresh)
            refused.extend(fresh)
            codes += [l[:3] for l in self.first_lines(fresh, timeout=30)]
            time.sleep(pause)
        return codes

    @staticmethod
    def first_lines(socks, timeout):
        """The first reply line of every socket (b"" if it closed first)."""
        sel = selectors.DefaultSelector()
        bufs = {}
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            bufs[s] = b""
        pending = set(socks)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(0.5):
                s = key.fileobj
                try:
                    chunk = s.recv(4096)
                except OSError:
                    chunk = b""
                bufs[s] += chunk
                if not chunk or b"\r\n" in bufs[s]:
                    pending.discard(s)
                    sel.unregister(s)
        sel.close()
        if pending:
            raise AssertionError("%d connections got no first line within "
                                 "%ss" % (len(pending), timeout))
        return [bufs[s].split(b"\r\n")[0] + b"\r\n" if b"\r\n" in bufs[s]
                else bufs[s] for s in socks]


# --- huge lines, NUL bytes, a flood that never reads ----------------------------------

class HugeInput(DaemonTestCase):
    DAEMON_ARGS = dict(limits=dict(errors=100, command_timeout="3s"))
    TIMEOUT = 100

    def send_in_thread(self, c, data):
        """sendall() in a thread (the daemon answers before it has read it
        all); returns the thread, already started."""
        err = []

        def run():
            try:
                c.sock.sendall(data)
            except OSError as e:
                err.append(e)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.err = err
        return t

    def test_10mb_command_line(self):
        pid = self.daemon.pid
        c = self.session()
        line = b"NOOP " + b"A" * (10 * 1024 * 1024) + b"\r\n"
        peak = PeakRss(pid)
        t = self.send_in_thread(c, line)
        c.expect(c.reply(timeout=30), 500, "5.5.2", "too long")
        t.join(30)
        self.assertFalse(t.is_alive(), "10 MB not read by the daemon in 30s")
        self.assertEqual(t.err, [])
        # exactly one reply, and the session is still in step
        c.check("NOOP", 250, "2.0.0")
        c.quiet(0.2)
        # the same with a path: no part of it may become a command
        c.send(b"MAIL FROM:<" + b"b" * (10 * 1024 * 1024) +
               b"@b.test>\r\nRCPT TO:<user@example.test>\r\n")
        c.expect(c.reply(timeout=30), 500, "5.5.2", "too long")
        c.expect(c.reply(timeout=30), 503, "5.5.1")
        grew = peak.finish()
        c.quit()
        note("10 MB command line: RSS %d kB before, peak %d kB (+%d kB)"
             % (peak.before, peak.peak, grew))
        self.assertLess(grew, RSS_BUDGET_KB, "RSS grew by %d kB" % grew)

    def test_10mb_line_without_end(self):
        """10 MB with no LF at all, then the client just leaves."""
        c = self.session()
        t = self.send_in_thread(c, b"X" * (10 * 1024 * 1024))
        c.expect(c.reply(timeout=30), 500, "5.5.2", "too long")
        t.join(30)
        c.close()
        c2 = self.session()
        c2.check("NOOP", 250)
        c2.quit()

    def test_nul_in_commands(self):
        """Every command line holding a NUL is refused as a whole: the part
        before the NUL never runs."""
        c = self.session()
        for line in (b"NOOP\x00", b"\x00", b"NO\x00OP",
                     b"EHLO evil\x00.example.test",
                     b"MAIL FROM:<a@b.test>\x00 SIZE=10",
                     b"MAIL FROM:<a@b.test\x00>"):
            with self.subTest(line=line):
                c.send(line + b"\r\n")
                c.expect(c.reply(), 500, "5.5.2", "NUL")
        c.check("RCPT TO:<user@example.test>", 503, "5.5.1")   # no MAIL ran
        c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
        for line in (b"RCPT TO:<user@example.test\x00@other.test>",
                     b"RCPT TO:<user@other.test\x00@example.test>",
                     b"RCPT TO:<user\x00@example.test>"):
            with self.subTest(line=line):
                c.send(line + b"\r\n")
                c.expect(c.reply(), 500, "5.5.2")
        c.check("DATA", 503, "5.5.1")              # no recipient was taken
        c.quit()

    def test_nul_in_data(self):
        """NUL in a message is refused (554 5.6.0) at the real end: RFC 5322
        and 8BITMIME forbid it, and a next hop that strips NULs would see
        "<CRLF>NUL.<CRLF>" as an end of data -- smuggling through us."""
        before = self.queue_count()
        bodies = [
            ("NUL in body", b"Subject: nul\r\n\r\nbefore\x00after\r\n"),
            ("NUL line", b"Subject: nul\r\n\r\n\x00\r\n"),
            ("NUL dot", b"Subject: nul\r\n\r\nx\r\n\x00.\r\n" + SMUGGLED),
            ("NUL in header", b"Subject: n\x00ul\r\n\r\nbody\r\n"),
        ]
        c = self.session()
        for name, body in bodies:
            with self.subTest(case=name):
                c.check("MAIL FROM:<a@b.test>", 250, "2.1.0")
                c.check("RCPT TO:<user@example.test>", 250, "2.1.5")
                c.check("DATA", 354)
                c.send(body + b".\r\n")
                c.expect(c.reply(), 554, "5.6.0")
        c.check("NOOP", 250)
        c.quit()
        self.assertEqual(self.queue_count(), before)

    def test_pipelining_flood_without_reading(self):
        """A client writes up to 40 MB of commands (each answered with a
        longer reply) and never reads: the daemon must stop reading rather
        than buffer replies without limit, drop the client at the write
        timeout, and free the session when it goes."""
        flood_without_reading(self, self.session(), "pipelining flood")

    def test_pipelining_flood_then_disconnect(self):
        """The client floods, then vanishes before any timeout: the session
        is freed (descriptor and connection slot) and others are served."""
        pid = self.daemon.pid
        fds_before = settled_fd_count(pid, self.daemon.port)
        mark = self.daemon.log_mark()
        c = self.session()
        c.sock.settimeout(1.0)
        chunk = b"NOOP\r\n" * 20000
        with contextlib.suppress(socket.timeout, OSError):
            for _ in range(200):
                c.sock.send(chunk)
        c.close()
        self.daemon.wait_log(r"disconnect from unknown\[127\.0\.0\.1\]",
                             timeout=10, since=mark)
        wait_fds_back(pid, fds_before)
        timed_transaction(self.daemon.port)


FLOOD_CHUNK = b"EHLO flood.example.test\r\nNOOP\r\nHELP\r\n" * 4096   # 160 KB
FLOOD_LIMIT = 40 * 1024 * 1024


def flood_without_reading(tc, c, what):
    """TC's daemon (command_timeout 3s) gets FLOOD_LIMIT bytes of commands
    on client C, which never reads. Checks the daemon's RSS stays within
    budget, that it stopped reading (the client blocks), that it drops
    and frees the session, and that another client is served meanwhile."""
    pid = tc.daemon.pid
    fds_before = settled_fd_count(pid, tc.daemon.port)
    mark = tc.daemon.log_mark()
    peak = PeakRss(pid)
    with LatencyProbe(tc.daemon.port, source="127.0.0.2") as probe:
        sent = 0
        c.sock.settimeout(2.0)       # blocked this long: the daemon stopped
        t0 = time.monotonic()
        try:
            while sent < FLOOD_LIMIT:
                sent += c.sock.send(FLOOD_CHUNK)
        except (socket.timeout, ssl.SSLError, OSError):
            pass
        flood_s = time.monotonic() - t0
        grew = peak.finish()
        # the daemon gives up on a client that does not read
        tc.daemon.wait_log(r"disconnect from unknown\[127\.0\.0\.1\]",
                           timeout=15, since=mark)
    probe.check(tc, what)
    c.close()
    note("%s: client wrote %.1f MB in %.1f s before blocking; daemon RSS "
         "%d kB before, peak %d kB (+%d kB)"
         % (what, sent / 1048576, flood_s, peak.before, peak.peak, grew))
    tc.assertLess(grew, RSS_BUDGET_KB, "RSS grew by %d kB" % grew)
    tc.assertLess(sent, FLOOD_LIMIT, "the daemon read 40 MB of commands "
                  "whose replies nobody reads")
    wait_fds_back(pid, fds_before)
    c2 = tc.session()
    c2.check("NOOP", 250)
    c2.quit()


class TlsFlood(DaemonTestCase):
    DAEMON_ARGS = dict(tls=True, limits=dict(command_timeout="3s"))
    TIMEOUT = 100

    def test_pipelining_flood_over_tls(self):
        """The same flood inside TLS, where the replies pass a TLS filter
        before the socket: it must hold them back as well."""
        c = self.session()
        c.starttls()
        c.ehlo()
        flood_without_reading(self, c, "pipelining flood over TLS")
