"""The benchmark's smoke test (issue 8): `bench/run --quick` runs every
workload of the benchmark with tiny sizes (intake, both flushes, drain,
serve, queue scale, floor, idle) against the real peers, and must finish
with exit status 0, no FAIL line and a row in its report for each
workload. Its numbers mean nothing and are not looked at: no time is
asserted (the machine is shared).

bench/run uses the normal build (bin/, build/): the test runs with the
normal variant only and skips under the sanitizer variant, like
test_install. It needs root (private Postfix, Dovecot and OpenSMTPD
instances) and the peers of bench/install-deps.sh; without them it skips
(OpenSMTPD is optional: bench/run leaves it out when its .deb is missing).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import harness

ROOT = harness.ROOT
RUN = os.path.join(ROOT, "bench", "run")
LIMIT = 480                      # seconds; --quick takes 1-2 minutes

# One pattern per workload of the report's first column.
WORKLOADS = [
    ("intake, 20 sessions", r"intake -s 20 -m \d+ -l 4096"),
    ("intake, 1 session", r"intake -s 1 -m \d+ -l 4096"),
    ("intake, 100 KB", r"intake -s 20 -m \d+ -l 102400"),
    ("flush to smtp-sink", r"flush \d+ x 4096 B to smtp-sink"),
    ("flush to a Postfix primary", r"flush \d+ x 4096 B to a Postfix primary"),
    ("drain", r"drain 4096 B msgs from Dovecot"),
    ("serve", r"serve \d+ x 4096 B from one Maildir"),
    ("queue scale intake", r"queue scale: intake -s \d+ -m \d+ -l \d+"),
    ("queue scale bmxq stats", r"queue scale: bmxq stats"),
    ("queue scale bmxq list", r"queue scale: bmxq list piped to tail -1"),
    ("queue scale daemon start", r"queue scale: daemon start"),
    ("disk floor", r"disk floor \(.*\)"),
    ("idle sessions", r"\d+ idle SMTP sessions"),
    ("idle TLS sessions", r"\d+ idle SMTP sessions \(STARTTLS\)"),
]


def normal_variant():
    return os.path.basename(harness.BIN) == "bin"


def blocker():
    """None when bench/run --quick can run here, else why not."""
    if not normal_variant():
        return "bench/run uses the normal build (bin/) only"
    if not harness.is_root():
        return "bench/run needs root"
    for exe in ("bin/backupmx", "bin/bmxq", "bin/fetchd", "build/tests/qtool",
                "build/tests/qfill"):
        if not os.access(os.path.join(ROOT, exe), os.X_OK):
            return "%s is not built (make)" % exe
    for tool in ("smtp-source", "smtp-sink", "fetchmail", "getmail", "openssl"):
        if not shutil.which(tool):
            return "%s is missing (bench/install-deps.sh)" % tool
    for path in ("/usr/sbin/postfix", "/usr/sbin/dovecot"):
        if not os.path.exists(path):
            return "%s is missing (bench/install-deps.sh)" % path
    return None


def report_rows(text):
    """[(workload, metric, system)] of the report's results table."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| workload ") \
                or line.startswith("| target "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9:
            rows.append((cells[0], cells[1], cells[2]))
    return rows


@unittest.skipIf(blocker(), blocker() or "")
class BenchQuick(unittest.TestCase):
    TIMEOUT = LIMIT + 120

    def run_quick(self, out):
        """bench/run --quick --out OUT; on overrun SIGTERM (bench/run stops
        every daemon it started), then SIGKILL."""
        log = tempfile.TemporaryFile()
        p = subprocess.Popen([sys.executable, RUN, "--quick", "--out", out], cwd=ROOT,
                             stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT)
        try:
            rc = p.wait(LIMIT)
        except BaseException:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            raise
        finally:
            log.seek(0)
            output = log.read().decode("utf-8", "replace")
            log.close()
        return rc, output

    def test_quick_run(self):
        fd, out = tempfile.mkstemp(prefix="bench-quick-", suffix=".md")
        os.close(fd)
        try:
            t0 = time.monotonic()
            try:
                rc, output = self.run_quick(out)
            except subprocess.TimeoutExpired:
                self.fail("bench/run --quick did not finish within %d s" % LIMIT)
            print("# bench/run --quick: %.0f s" % (time.monotonic() - t0))
            with open(out, errors="replace") as f:
                report = f.read()
        finally:
            os.unlink(out)
        # bench/run's log lines ("[HH:MM:SS] ..."); the report follows them
        logged = [l for l in output.splitlines() if re.match(r"\[\d\d:\d\d:\d\d\] ", l)]
        tail = "\n".join(logged[-40:] or output.splitlines()[-40:])
        fails = [l for l in logged if re.match(r"\[[\d:]+\] FAIL\b", l)]
        self.assertEqual(fails, [], "FAIL lines in the output:\n%s" % tail)
        self.assertNotIn("## FAILURES", report)
        self.assertEqual(rc, 0, "bench/run --quick exit %d:\n%s" % (rc, tail))
        workloads = {wl for wl, _m, _s in report_rows(report)}
        for what, pattern in WORKLOADS:
            with self.subTest(workload=what):
                self.assertTrue(any(re.fullmatch(pattern, wl) for wl in workloads),
                                "no row for %s (%s) in the report; workloads: %s"
                                % (what, pattern, sorted(workloads)))
        # queue scale: the empty queue and at least one filled level
        levels = {s for wl, m, s in report_rows(report)
                  if wl.startswith("queue scale: intake") and m == "accept rate"}
        self.assertIn("backupmx, 0 queued", levels)
        self.assertGreaterEqual(len(levels), 2, levels)


if __name__ == "__main__":
    unittest.main()
