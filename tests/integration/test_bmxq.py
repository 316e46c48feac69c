"""bmxq, the queue tool (issue 4), against the real daemon and its control
socket.

Offline        bmxq with no daemon: an empty spool, usage errors, exit codes.
Bmxq           one daemon, Python SMTP sinks as the domains' primaries
               (started and stopped to bring a primary up and down) and a
               staller (accepts, never greets) to catch a delivery in the
               act: list (text, JSON Lines, domain filter) with the right
               states, show, hold/release, delete, bounce (a DSN), flush
               DOMAIN, stats, the daemon stopped (list still works, flush
               exits 75), the socket's mode and the refusal of other users.
Scale5k        5,000 queued messages: list and stats answer, and the daemon
               keeps accepting mail while a list streams. The same test with
               100,000 messages is test_bmxq_scale.py (BMX_LONG=1).

Retries are an hour apart (queue.retry_min/max) so that nothing but bmxq
makes mail move while a test looks.
"""

import json
import os
import re
import socket
import stat
import subprocess
import threading
import time
import unittest

import harness
from harness import (Daemon, DaemonTestCase, SMTPClient, make_message,
                     run_tool, wait_until)
from primary import SinkPrimary

EX_TEMPFAIL = 75
EX_NOPERM = 77
QID_RE = r"[0-9A-Z]{16}"
SUMMARY_RE = re.compile(r"^-- (\d+) Kbytes in (\d+) requests?\.$", re.M)

TEMPLATE = """# backupmx bmxq test config (generated)
hostname = "mx2.example.test"
spool = "@SPOOL@"
@USER@
listen = { @LISTEN@ }
limits { @LIMITS@ }
queue { retry_min = 1h  retry_max = 1h }
domain "alpha.test"   { mode = "relay"  primary = { "127.0.0.1:%(alpha)d" } }
domain "beta.test"    { mode = "relay"  primary = { "127.0.0.1:%(beta)d" } }
domain "gamma.test"   { mode = "relay"  primary = { "127.0.0.1:%(gamma)d" } }
domain "delta.test"   { mode = "relay"  primary = { "127.0.0.1:%(dead)d" } }
domain "epsilon.test" { mode = "relay"  primary = { "127.0.0.1:%(dead)d" } }
domain "zeta.test"    { mode = "relay"  primary = { "127.0.0.1:%(dead)d" } }
@EXTRA@
"""


def bmxq_path():
    return os.path.join(harness.BIN, "bmxq")


def bmxq(conf, *args, ids=None, timeout=120):
    """Runs bmxq -f CONF ARGS; CompletedProcess with text stdout/stderr."""
    cp = run_tool([bmxq_path(), "-f", conf] + list(args), check=False,
                  ids=ids, timeout=timeout)
    cp.out = cp.stdout.decode("utf-8", "replace")
    cp.err = cp.stderr.decode("utf-8", "replace")
    return cp


def parse_list(text):
    """{qid: dict(size, sender, rcpts=[(state, addr, error)])} from the
    text of `bmxq list`."""
    res, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^(%s)\s+(\d+) (.{19})  (\S+)$" % QID_RE, line)
        if m:
            cur = dict(size=int(m.group(2)), sender=m.group(4), rcpts=[])
            res[m.group(1)] = cur
            continue
        m = re.match(r"^    (deferred|held|active)\s+(\S+)$", line)
        if m and cur is not None:
            cur["rcpts"].append([m.group(1), m.group(2), None])
            continue
        m = re.match(r"^\s{14}\((.*)\)$", line)
        if m and cur is not None and cur["rcpts"]:
            cur["rcpts"][-1][2] = m.group(1)
    return res


class Staller:
    """Accepts connections on 127.0.0.1:PORT and never says a word: a
    delivery to it stays in progress until stop() closes everything."""

    def __init__(self, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.conns = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except socket.timeout:
                continue
            except OSError:
                return

    def stop(self):
        if not self.running:
            return
        self.running = False
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


# =============================================================================
# No daemon at all
# =============================================================================

class Offline(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()           # a config and a spool, never started
        cls.addClassCleanup(cls.d.cleanup)

    def run_bmxq(self, *args):
        return bmxq(self.d.conf, *args)

    def test_empty_spool_lists_empty_queue(self):
        cp = self.run_bmxq()
        self.assertEqual(cp.returncode, 0, cp.err)
        self.assertEqual(cp.out, "Mail queue is empty\n")
        cp = self.run_bmxq("list", "--json")
        self.assertEqual((cp.returncode, cp.out), (0, ""), cp.err)
        cp = self.run_bmxq("stats")
        self.assertEqual(cp.returncode, 0, cp.err)
        self.assertIn("messages: 0\n", cp.out)

    def test_commands_that_need_the_daemon_exit_75(self):
        for args in (["flush"], ["flush", "alpha.test"], ["hold", "all"],
                     ["release", "all"], ["delete", "all"],
                     ["bounce", "CRAX4TG5CY001FVH"]):
            with self.subTest(args=args):
                cp = self.run_bmxq(*args)
                self.assertEqual(cp.returncode, EX_TEMPFAIL, cp.err)
                self.assertEqual(cp.err, "bmxq: backupmx is not running\n")

    def test_unknown_id_offline(self):
        cp = self.run_bmxq("show", "CRAX4TG5CY001FVH")
        self.assertEqual(cp.returncode, 1)
        self.assertEqual(cp.err, "bmxq: no such message: CRAX4TG5CY001FVH\n")

    def test_usage_errors_exit_2(self):
        for args in (["frob"], ["show"], ["show", "-x", "ID"], ["hold"],
                     ["bounce"], ["stats", "x"], ["list", "a.test", "b.test"],
                     ["delete", "a", "b"], ["-Z"], ["list", "bad\x01arg"]):
            with self.subTest(args=args):
                cp = self.run_bmxq(*args)
                self.assertEqual(cp.returncode, 2, cp.err)
                self.assertIn("usage", cp.err)

    def test_version_and_help(self):
        cp = run_tool([bmxq_path(), "-V"])
        self.assertRegex(cp.stdout.decode(), r"^bmxq \d+\.\d+\.\d+\n$")
        cp = run_tool([bmxq_path(), "-h"])
        self.assertIn(b"usage: bmxq", cp.stdout)

    def test_bad_config_exit_78(self):
        cp = bmxq("/nonexistent/backupmx.conf", "list")
        self.assertEqual(cp.returncode, 78, cp.err)


# =============================================================================
# The daemon, its primaries, and bmxq
# =============================================================================

class Bmxq(DaemonTestCase):

    TIMEOUT = 120

    @classmethod
    def setUpClass(cls):
        (cls.p_alpha, cls.p_beta, cls.p_gamma, cls.p_dead) = harness.free_ports(4)
        cls.alpha = cls.beta = None
        tmpl = TEMPLATE % dict(alpha=cls.p_alpha, beta=cls.p_beta,
                               gamma=cls.p_gamma, dead=cls.p_dead)
        # The control socket in a directory other users may enter (the
        # spool is 0700), so that the permission check is the daemon's.
        cls.DAEMON_ARGS = dict(template=tmpl, limits=dict(errors=1000),
                               extra='control = "@TMP@/run/control"')
        cls.daemon = Daemon(**cls.DAEMON_ARGS)
        cls.addClassCleanup(cls.daemon.cleanup)
        run = cls.daemon.path("run")
        os.mkdir(run, 0o755)
        if harness.is_root():
            import pwd
            pw = pwd.getpwnam("nobody")
            os.chown(run, pw.pw_uid, pw.pw_gid)
        cls.daemon.start()
        cls.ctl = os.path.join(run, "control")

    @classmethod
    def tearDownClass(cls):
        for p in (cls.alpha, cls.beta):
            if p is not None:
                p.stop()
        super().tearDownClass()

    def tearDown(self):
        for name in ("alpha", "beta"):
            self.primary_down(name)
        super().tearDown()

    # --- helpers -------------------------------------------------------------
    def bmxq(self, *args, **kw):
        return bmxq(self.daemon.conf, *args, **kw)

    def ok(self, *args, **kw):
        cp = self.bmxq(*args, **kw)
        if cp.returncode != 0:
            self.fail("bmxq %s: exit %d\nstdout: %s\nstderr: %s\n%s"
                      % (" ".join(args), cp.returncode, cp.out[-2000:], cp.err,
                         self.daemon.log_tail(15)))
        return cp.out

    def primary_up(self, name):
        if getattr(type(self), name) is None:
            setattr(type(self), name,
                    SinkPrimary(getattr(self, "p_" + name)))
        return getattr(type(self), name)

    def primary_down(self, name):
        p = getattr(type(self), name)
        if p is not None:
            p.stop()
            setattr(type(self), name, None)

    def send(self, rcpts, sender="sender@b.test", subject=None, body=b"Hi.\r\n"):
        subject = subject or "%s %s" % (self.id().rsplit(".", 1)[-1], time.time())
        msg = make_message(subject, body)
        c = self.session()
        qid = c.send_mail(sender=sender, rcpts=rcpts, msg=msg)
        c.quit()
        return qid, msg

    def listing(self, *args):
        return parse_list(self.ok("list", *args))

    def json_listing(self, *args):
        out = self.ok("list", "--json", *args)
        # a real JSON parser, as the issue asks, then line by line
        cp = subprocess.run(["python3", "-m", "json.tool", "--json-lines"],
                            input=out.encode(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(cp.returncode, 0, "json.tool: %s\n%s"
                         % (cp.stderr.decode(), out[:3000]))
        return {o["id"]: o for o in map(json.loads, out.splitlines())}

    def wait_attempted(self, qid, timeout=15):
        """Until every recipient of QID waits for its next attempt, an hour
        away (the first attempt, or the destination's probe time, is
        behind it). Returns its `list` entry."""
        def waiting():
            o = self.json_listing().get(qid)
            return o and all(r["state"] == "deferred" and
                             r["next_attempt"] > time.time() + 600
                             for r in o["recipients"])
        wait_until(waiting, timeout, "%s waiting for its retry" % qid,
                   detail=lambda: self.ok("list", "--json"))
        return self.listing()[qid]

    def in_queue(self, qid):
        return qid in self.listing()

    # --- list ------------------------------------------------------------------
    def test_list_two_domains_text_json_and_filter(self):
        m1, _ = self.send(["a1@alpha.test", "b1@beta.test"])
        m2, _ = self.send(["b2@beta.test"], sender="")
        m3, _ = self.send(["a3@alpha.test"])
        for q in (m1, m2, m3):
            self.wait_attempted(q)
        self.assertIn("held: 1 message", self.ok("hold", m3))

        text = self.ok("list")
        lst = parse_list(text)
        self.assertTrue(text.startswith("-Queue ID-"), text[:200])
        self.assertEqual(lst[m1]["sender"], "sender@b.test")
        self.assertEqual(lst[m2]["sender"], "<>")
        self.assertEqual([r[:2] for r in lst[m1]["rcpts"]],
                         [["deferred", "a1@alpha.test"], ["deferred", "b1@beta.test"]])
        self.assertEqual([r[:2] for r in lst[m2]["rcpts"]], [["deferred", "b2@beta.test"]])
        self.assertEqual([r[:2] for r in lst[m3]["rcpts"]], [["held", "a3@alpha.test"]])
        self.assertIn("127.0.0.1", lst[m1]["rcpts"][0][2], "the last error")
        m = SUMMARY_RE.search(text)
        self.assertTrue(m and text.endswith(m.group(0) + "\n"), text[-300:])
        self.assertEqual(int(m.group(2)), len(lst))
        self.assertEqual(int(m.group(1)),
                         (sum(e["size"] for e in lst.values()) + 1023) // 1024)

        js = self.json_listing()
        self.assertEqual(set(js), set(lst))
        now = time.time()
        for q in (m1, m2, m3):
            o = js[q]
            self.assertEqual(set(o), {"id", "size", "arrival", "sender", "recipients"})
            self.assertEqual(o["size"], lst[q]["size"])
            self.assertLess(abs(o["arrival"] - now), 120)
            self.assertEqual([(r["state"], r["address"]) for r in o["recipients"]],
                             [tuple(r[:2]) for r in lst[q]["rcpts"]])
            for r in o["recipients"]:
                self.assertEqual(set(r), {"address", "state", "attempts",
                                          "next_attempt", "last_error"})
                self.assertIsInstance(r["attempts"], int)
                self.assertIsInstance(r["next_attempt"], int)
                self.assertIsInstance(r["last_error"], (str, type(None)))
        self.assertEqual(js[m2]["sender"], "")
        self.assertEqual(js[m1]["sender"], "sender@b.test")

        beta = self.listing("beta.test")
        self.assertEqual(set(beta) & {m1, m2, m3}, {m1, m2})
        self.assertEqual([r[1] for r in beta[m1]["rcpts"]], ["b1@beta.test"])
        self.assertTrue(all(r[1].endswith("@beta.test")
                            for e in beta.values() for r in e["rcpts"]))
        jbeta = self.json_listing("BETA.test")
        self.assertEqual(set(jbeta), set(beta))
        self.assertEqual([r["address"] for r in jbeta[m1]["recipients"]],
                         ["b1@beta.test"])
        self.assertEqual(self.ok("list", "nowhere.test"), "Mail queue is empty\n")
        self.assertEqual(self.ok("list", "--json", "nowhere.test"), "")
        for q in (m1, m2, m3):
            self.ok("delete", q)

    def test_json_escapes_hostile_replies(self):
        """A primary's reply with quotes, control characters and bytes
        that are not UTF-8 ends up as the last error: JSON still parses."""
        p = self.primary_up("beta")
        p.set_rules([(r"^weird@", '450 4.2.0 "caf\udcff" \x1b[1m \\ tab\there')])
        qid, _ = self.send(["weird@beta.test"])
        self.ok("flush", "beta.test")       # in case beta is in its backoff
        wait_until(lambda: p.commands and any("weird@" in c for _, c in p.commands),
                   15, "RCPT TO:<weird@beta.test> at the primary")
        e = self.wait_attempted(qid)
        js = self.json_listing()[qid]
        err = js["recipients"][0]["last_error"]
        self.assertIsNotNone(err, js)
        self.assertRegex(err, r'"caf.')
        self.assertNotIn("\x1b", self.ok("list"), "raw ESC on a terminal")
        self.assertTrue(e["rcpts"][0][2])
        self.ok("delete", qid)

    def test_active_state_while_delivering(self):
        staller = Staller(self.p_gamma)
        self.addCleanup(staller.stop)
        qid, _ = self.send(["slow@gamma.test"])

        def active():
            e = self.listing().get(qid)
            return e and e["rcpts"][0][0] == "active"
        wait_until(active, 15, "recipient shown active during its delivery",
                   detail=lambda: self.ok("list"))
        js = self.json_listing()[qid]
        self.assertEqual(js["recipients"][0]["state"], "active")
        staller.stop()
        wait_until(lambda: self.listing()[qid]["rcpts"][0][0] == "deferred",
                   30, "deferred again once the attempt failed")
        self.ok("delete", qid)

    # --- show ------------------------------------------------------------------
    def test_show_envelope_headers_and_body(self):
        qid, msg = self.send(["s1@delta.test", "s2@delta.test"],
                             body=b"The body text.\r\n.dot line\r\n")
        out = self.ok("show", qid)
        self.assertIn("id: %s\n" % qid, out)
        self.assertIn("sender: <sender@b.test>\n", out)
        self.assertRegex(out, r"recipient: (deferred|active) <s1@delta.test>")
        self.assertRegex(out, r"recipient: (deferred|active) <s2@delta.test>")
        self.assertIn("\nReceived: from ", out)
        self.assertIn("\nSubject: test_show_envelope", out)
        self.assertNotIn("The body text.", out)
        self.assertNotIn("\r", out)
        # ids are upper case; a lower-case one is taken as well (compared
        # without the recipient lines: a delivery attempt may move a
        # recipient from active to deferred between the two calls)
        def stable(text):
            return re.sub(r"(?m)^(recipient: |  last error: ).*\n", "", text)
        self.assertEqual(stable(self.ok("show", qid.lower())), stable(self.ok("show", qid)))
        cp = self.bmxq("show", "-b", qid)
        self.assertEqual(cp.returncode, 0, cp.err)
        rec, rest = harness.split_received(cp.stdout)
        self.assertIn(qid.encode(), rec)
        self.assertEqual(rest, msg, "show -b: the message exactly as stored")
        self.ok("delete", qid)

    def test_unknown_ids_exit_1(self):
        for args in (["show", "CRAX4TG5CY001FVH"], ["show", "-b", "nonsense"],
                     ["hold", "CRAX4TG5CY001FVH"], ["release", "CRAX4TG5CY001FVH"],
                     ["delete", "CRAX4TG5CY001FVH"], ["bounce", "CRAX4TG5CY001FVH"],
                     ["flush", "CRAX4TG5CY001FVH"], ["hold", "alpha.test"]):
            with self.subTest(args=args):
                cp = self.bmxq(*args)
                self.assertEqual(cp.returncode, 1, cp.err)
                self.assertEqual(cp.err, "bmxq: no such message: %s\n" % args[-1])

    # --- hold, release, delete, bounce, flush ------------------------------------
    def test_hold_keeps_back_release_delivers(self):
        held, _ = self.send(["h1@alpha.test"])
        other, _ = self.send(["h2@alpha.test"])
        for q in (held, other):
            self.wait_attempted(q)
        self.assertEqual(self.ok("hold", held), "held: 1 message\n")
        self.assertEqual(self.listing()[held]["rcpts"][0][0], "held")
        p = self.primary_up("alpha")
        self.ok("flush")
        p.wait(lambda s: s.messages_to("h2@alpha.test"), 15, "h2 delivered")
        wait_until(lambda: not self.in_queue(other), 10, "delivered mail leaves the queue")
        time.sleep(2)
        self.assertEqual(p.messages_to("h1@alpha.test"), [], "held mail was delivered")
        self.assertEqual(self.listing()[held]["rcpts"][0][0], "held")
        self.ok("flush", "alpha.test")   # a flush does not release
        time.sleep(1.5)
        self.assertEqual(p.messages_to("h1@alpha.test"), [])
        self.assertEqual(self.ok("release", held), "released: 1 message\n")
        p.wait(lambda s: s.messages_to("h1@alpha.test"), 15, "h1 delivered after release")
        wait_until(lambda: not self.in_queue(held), 10, "released mail leaves the queue")
        self.assertEqual(len(p.messages_to("h1@alpha.test")), 1)

    def test_hold_all_release_all(self):
        a, _ = self.send(["ha@zeta.test"])
        b, _ = self.send(["hb@zeta.test"])
        out = self.ok("hold", "all")
        self.assertRegex(out, r"^held: \d+ messages?\n$")
        lst = self.listing("zeta.test")
        self.assertEqual([lst[q]["rcpts"][0][0] for q in (a, b)], ["held", "held"])
        self.assertRegex(self.ok("release", "all"), r"^released: \d+ messages?\n$")
        lst = self.listing("zeta.test")
        self.assertNotIn("held", [lst[q]["rcpts"][0][0] for q in (a, b)])
        self.ok("delete", "zeta.test")

    def test_delete_never_delivered(self):
        gone, _ = self.send(["d1@beta.test"])
        kept, _ = self.send(["d2@beta.test"])
        for q in (gone, kept):
            self.wait_attempted(q)
        self.assertEqual(self.ok("delete", gone), "deleted: 1 message\n")
        self.assertNotIn(gone, self.listing())
        self.assertEqual(self.bmxq("show", gone).returncode, 1)
        p = self.primary_up("beta")
        self.ok("flush", "beta.test")
        p.wait(lambda s: s.messages_to("d2@beta.test"), 15, "d2 delivered")
        time.sleep(2)
        self.assertEqual(p.messages_to("d1@beta.test"), [], "deleted mail was delivered")

    def test_delete_domain(self):
        e1, _ = self.send(["x1@epsilon.test"])
        e2, _ = self.send(["x2@epsilon.test", "x3@epsilon.test"])
        keep, _ = self.send(["x4@delta.test"])
        self.assertEqual(self.ok("delete", "epsilon.test"), "deleted: 2 messages\n")
        lst = self.listing()
        self.assertNotIn(e1, lst)
        self.assertNotIn(e2, lst)
        self.assertIn(keep, lst)
        self.assertEqual(self.ok("list", "epsilon.test"), "Mail queue is empty\n")
        self.ok("delete", keep)

    def test_bounce_produces_dsn(self):
        p = self.primary_up("alpha")          # the sender's domain is ours
        qid, msg = self.send(["nobody@beta.test"], sender="owner@alpha.test",
                             subject="bounce me")
        self.wait_attempted(qid)
        self.assertEqual(self.ok("bounce", qid), "bounced: 1 message\n")
        self.assertNotIn(qid, self.listing())
        self.ok("flush", "alpha.test")
        txs = p.wait(lambda s: s.messages_to("owner@alpha.test"), 20,
                     "a DSN to owner@alpha.test")
        dsn = txs[0]
        self.assertEqual(dsn.sender, "", "a DSN goes out with MAIL FROM:<>")
        self.assertIn(b"multipart/report", dsn.data)
        self.assertRegex(dsn.data, rb'report-type="?delivery-status')
        self.assertIn(b"nobody@beta.test", dsn.data)
        self.assertIn(b"bounce me", dsn.data)

    def test_flush_domain_skips_backoff_and_other_domain(self):
        qa, _ = self.send(["f1@alpha.test"])
        qb, _ = self.send(["f2@beta.test"])
        for q in (qa, qb):
            self.wait_attempted(q)
        pa, pb = self.primary_up("alpha"), self.primary_up("beta")
        time.sleep(1.5)                     # the hour of backoff holds
        self.assertEqual(pa.messages_to("f1@alpha.test"), [])
        self.assertRegex(self.ok("flush", "alpha.test"), r"^flushed: \d+ messages?\n$")
        t0 = time.monotonic()
        pa.wait(lambda s: s.messages_to("f1@alpha.test"), 15, "f1 delivered after flush")
        took = time.monotonic() - t0
        self.assertLess(took, 15)
        wait_until(lambda: not self.in_queue(qa), 10, "f1 leaves the queue")
        time.sleep(2)
        self.assertEqual(pb.messages_to("f2@beta.test"), [], "the other domain moved")
        self.assertEqual(pb.connections, 0)
        e = self.listing()[qb]
        self.assertEqual(e["rcpts"][0][0], "deferred")
        # and an id
        self.assertEqual(self.ok("flush", qb), "flushed: 1 message\n")
        pb.wait(lambda s: s.messages_to("f2@beta.test"), 15, "f2 delivered after flush ID")

    # --- stats -------------------------------------------------------------------
    def test_stats(self):
        s1, _ = self.send(["t1@delta.test", "t2@delta.test"])
        s2, _ = self.send(["t3@delta.test"])
        self.wait_attempted(s1)
        self.ok("hold", s2)
        out = self.ok("stats")
        self.assertRegex(out, r"(?m)^messages: \d+$")
        self.assertRegex(out, r"(?m)^recipients: \d+ \(deferred \d+, held \d+, active \d+\)$")
        self.assertRegex(out, r"(?m)^bytes: \d+ \(\d+ Kbytes\)$")
        self.assertRegex(out, r"(?m)^oldest: \d+\w( \d+\w)? \(")
        self.assertRegex(out, r"(?m)^delivered since start: \d+$")
        self.assertRegex(out, r"(?m)^bounced since start: \d+$")
        m = re.search(r"(?m)^delta\.test\s+(\d+)\s+(\d+)\s+(\d+)$", out)
        self.assertTrue(m, out)
        self.assertGreaterEqual(int(m.group(1)), 2)
        self.assertGreaterEqual(int(m.group(2)), 1)
        self.assertRegex(out, r"(?m)^destinations down: \d+$")
        self.assertRegex(out, r"(?m)^  delta\.test: next probe (now|in .*)")
        self.ok("delete", s1)
        self.ok("delete", s2)

    # --- with the daemon stopped ----------------------------------------------------
    def test_daemon_stopped_list_show_stats_and_flush(self):
        qid, _ = self.send(["o1@delta.test", "o2@alpha.test"])
        self.wait_attempted(qid)
        online = self.listing()[qid]
        online_json = self.json_listing()[qid]
        with self.daemon.stopped():
            self.assertFalse(os.path.exists(self.ctl), "socket left behind")
            offline = self.listing()
            self.assertEqual(offline[qid], online)
            self.assertEqual(self.json_listing()[qid], online_json)
            self.assertIn("o1@delta.test", self.ok("list", "delta.test"))
            self.assertIn("id: %s" % qid, self.ok("show", qid))
            out = self.ok("stats")
            self.assertIn("backupmx is not running", out)
            for args in (["flush"], ["hold", qid], ["delete", qid]):
                cp = self.bmxq(*args)
                self.assertEqual(cp.returncode, EX_TEMPFAIL, cp.err)
                self.assertEqual(cp.err, "bmxq: backupmx is not running\n")
        self.assertIn(qid, self.listing())
        self.ok("delete", qid)

    def test_after_a_crash(self):
        """kill -9 leaves a stale socket and a spool that needs recovery:
        offline reading refuses (75), the restarted daemon replaces the
        socket and answers."""
        qid, _ = self.send(["c1@delta.test"])
        self.daemon.kill9()
        try:
            self.assertTrue(stat.S_ISSOCK(os.lstat(self.ctl).st_mode))
            cp = self.bmxq("list")
            self.assertEqual(cp.returncode, EX_TEMPFAIL, cp.out + cp.err)
            self.assertIn("not closed cleanly", cp.err)
        finally:
            self.daemon.start()
        self.assertIn(qid, self.listing())
        self.ok("delete", qid)

    # --- the socket and who may use it --------------------------------------------
    def test_socket_mode_and_owner(self):
        st = os.lstat(self.ctl)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        uid, gid = self.daemon.run_ids
        self.assertEqual((st.st_uid, st.st_gid), (uid, gid))

    @unittest.skipUnless(harness.is_root(), "needs root to run bmxq as others")
    def test_other_users_are_refused(self):
        uid, gid = self.daemon.run_ids
        stranger = (1, 1) if 1 not in (uid, gid) else (2, 2)
        # the file mode keeps strangers out ...
        cp = self.bmxq("list", ids=stranger)
        self.assertEqual(cp.returncode, EX_NOPERM, cp.err)
        self.assertIn("permission denied", cp.err)
        # ... and if it did not, the daemon's own check does
        mark = self.daemon.log_mark()
        os.chmod(self.ctl, 0o666)
        try:
            for args in (["list"], ["flush"], ["delete", "all"]):
                cp = self.bmxq(*args, ids=stranger)
                self.assertEqual(cp.returncode, EX_NOPERM, cp.err)
                self.assertIn("bmxq: permission denied", cp.err)
            self.daemon.wait_log(r"control: uid %d pid \d+: permission denied"
                                 % stranger[0], since=mark)
            # a member of the daemon's group is welcome
            cp = self.bmxq("list", ids=(stranger[0], gid))
            self.assertEqual(cp.returncode, 0, cp.err)
        finally:
            os.chmod(self.ctl, 0o660)

    def test_protocol_by_hand(self):
        """The documented protocol, spoken directly to the socket."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.ctl)
        f = s.makefile("rb")
        s.sendall(b"version\nfrob\nshow nosuch\nlist nowhere.test json\n")
        self.assertRegex(f.readline(), rb"^\|backupmx \d+\.\d+\.\d+\n$")
        self.assertEqual(f.readline(), b"ok\n")
        self.assertEqual(f.readline(), b"error unknown command: frob\n")
        self.assertEqual(f.readline(), b"error no such message: nosuch\n")
        self.assertEqual(f.readline(), b"ok 0\n")
        s.sendall(b"list nowhere.test\r\n")
        self.assertEqual(f.readline(), b"|Mail queue is empty\n")
        self.assertEqual(f.readline(), b"ok 0\n")
        # a client that half-closes after its requests still gets the answers
        h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        h.settimeout(10)
        h.connect(self.ctl)
        h.sendall(b"version\nlist\nstats\n")
        h.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = h.recv(65536)
            if not chunk:
                break
            data += chunk
        h.close()
        self.assertTrue(data.startswith(b"|backupmx "), data[:100])
        self.assertEqual(data.count(b"\nok"), 3, data[-300:])
        self.assertTrue(data.endswith(b"\nok\n"), data[-300:])
        s.sendall(b"x" * 5000 + b"\n")
        self.assertEqual(f.readline(), b"error request line too long\n")
        try:                         # then it hangs up
            self.assertEqual(f.readline(), b"")
        except ConnectionResetError:
            pass
        s.close()


# =============================================================================
# Scale: a big queue
# =============================================================================

class ScaleBase:
    """N messages queued for a dead primary; list and stats over them, and
    the daemon's SMTP service while a list streams to a slow reader.
    Subclasses set N (and are DaemonTestCases)."""

    N = 5000
    TIMEOUT = 600

    @classmethod
    def scale_args(cls):
        dead = harness.free_ports(1)[0]
        tmpl = TEMPLATE % dict(alpha=dead, beta=dead, gamma=dead, dead=dead)
        return dict(template=tmpl, limits=dict(connections=200,
                    connections_per_ip=100, errors=1000, command_timeout="30s",
                    data_timeout="30s"))

    def note(self, text):
        print("# %s: %s" % (type(self).__name__, text), flush=True)

    def bmxq(self, *args, **kw):
        return bmxq(self.daemon.conf, *args, **kw)

    def fill(self):
        t0 = time.monotonic()
        cp = run_tool(["/usr/sbin/smtp-source", "-s", "20", "-m", str(self.N),
                       "-l", "400", "-f", "load@b.test", "-t", "sink@delta.test",
                       "127.0.0.1:%d" % self.daemon.port],
                      timeout=max(120, self.N / 50), check=False)
        took = time.monotonic() - t0
        out = self.bmxq("stats", timeout=600)
        m = re.search(r"(?m)^messages: (\d+)$", out.stdout.decode())
        self.assertTrue(m, out.stdout + out.stderr)
        self.assertGreaterEqual(int(m.group(1)), self.N,
                                "smtp-source: %r" % cp.stderr[-1000:])
        self.note("filled %d messages in %.1fs (%.0f/s)"
                  % (self.N, took, self.N / took))

    def test_big_queue(self):
        if not os.access("/usr/sbin/smtp-source", os.X_OK):
            self.skipTest("smtp-source (postfix) is not installed")
        self.fill()

        t0 = time.monotonic()
        cp = subprocess.run("%s -f %s list | tail -1" % (bmxq_path(), self.daemon.conf),
                            shell=True, stdout=subprocess.PIPE, timeout=600)
        t_list = time.monotonic() - t0
        m = SUMMARY_RE.match(cp.stdout.decode())
        self.assertTrue(m, cp.stdout)
        self.assertGreaterEqual(int(m.group(2)), self.N)

        t0 = time.monotonic()
        st = self.bmxq("stats", timeout=600)
        t_stats = time.monotonic() - t0
        self.assertEqual(st.returncode, 0, st.stderr)
        d = re.search(r"(?m)^delta\.test\s+(\d+)\s+(\d+)\s+(\d+)$",
                      st.stdout.decode())
        self.assertTrue(d, st.stdout)
        self.assertEqual(int(d.group(1)) + int(d.group(3)), int(m.group(2)))

        t0 = time.monotonic()
        js = self.bmxq("list", "--json", timeout=600)
        t_json = time.monotonic() - t0
        self.assertEqual(len(js.stdout.splitlines()), int(m.group(2)))
        json.loads(js.stdout.splitlines()[-1])

        # a slow reader: the daemon must go on serving SMTP meanwhile
        p = subprocess.Popen([bmxq_path(), "-f", self.daemon.conf, "list"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            first = p.stdout.read(64 * 1024)
            self.assertTrue(first.startswith(b"-Queue ID-"))
            t0 = time.monotonic()
            c = SMTPClient(self.daemon.port, timeout=10)
            c.banner()
            c.ehlo()
            qid = c.send_mail(rcpts=("during@delta.test",))
            c.quit()
            t_smtp = time.monotonic() - t0
            rest, err = p.communicate(timeout=600)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 0, err)
        tail = (first + rest).decode()
        m2 = SUMMARY_RE.search(tail)
        self.assertTrue(m2 and tail.endswith(m2.group(0) + "\n"), tail[-500:])
        self.assertGreaterEqual(int(m2.group(2)), self.N)
        self.assertLess(t_smtp, 5, "SMTP transaction while list streamed")

        with self.daemon.stopped():
            t0 = time.monotonic()
            off = subprocess.run("%s -f %s list | tail -1" % (bmxq_path(), self.daemon.conf),
                                 shell=True, stdout=subprocess.PIPE, timeout=600)
            t_off = time.monotonic() - t0
            m3 = SUMMARY_RE.match(off.stdout.decode())
            self.assertTrue(m3, off.stdout)
            self.assertEqual(int(m3.group(2)), int(m.group(2)) + 1, "with %s" % qid)
        self.note("N=%d: list|tail -1 %.2fs, stats %.2fs, list --json %.2fs, "
                  "SMTP transaction during a streaming list %.3fs, "
                  "offline list|tail -1 %.2fs"
                  % (self.N, t_list, t_stats, t_json, t_smtp, t_off))


class Scale5k(ScaleBase, DaemonTestCase):
    N = 5000

    @classmethod
    def setUpClass(cls):
        cls.DAEMON_ARGS = cls.scale_args()
        super().setUpClass()
