#!/usr/bin/env python3
"""Runs the backupmx integration suites (tests/integration/test_*.py) and
prints TAP-style lines:

    ok N - module.Class.test
    not ok N - module.Class.test
    # <traceback lines>
    ok N - module.Class.test # SKIP reason

Usage: run.py --bin bin --build build [-v]
Environment: BMX_TEST_FILTER=substring[,substring...] (only tests whose id contains one),
BMX_KEEP=1 (keep the daemons' temp dirs), BMX_TEST_TIMEOUT=seconds (per
test, default 120). Exit status 1 if any test failed, 2 if the suite could
not run.
"""

import argparse
import os
import signal
import sys
import time
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402


class TestTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise TestTimeout("test exceeded its time limit")


def test_name(test):
    if isinstance(test, unittest.suite._ErrorHolder):
        # "setUpClass (test_x.Class)" -> "test_x.Class.setUpClass"
        desc = test.description
        if " (" in desc and desc.endswith(")"):
            what, _, where = desc[:-1].partition(" (")
            return "%s.%s" % (where, what)
        return desc
    return test.id()


class TapResult(unittest.TestResult):
    def __init__(self, verbose=False):
        super().__init__()
        self.n = 0
        self.passed = 0
        self.nfailed = 0
        self.nskipped = 0
        self.verbose = verbose
        self.current = None

    def _emit(self, name, status, details=(), skip=None, secs=None):
        self.n += 1
        if status == "ok" and skip is not None:
            self.nskipped += 1
            print("ok %d - %s # SKIP %s" % (self.n, name, skip), flush=True)
            return
        if status == "ok":
            self.passed += 1
        else:
            self.nfailed += 1
        print("%s %d - %s" % (status, self.n, name), flush=True)
        if self.verbose and secs is not None:
            print("# time: %.2fs" % secs)
        for block in details:
            for line in block.rstrip("\n").split("\n"):
                print("# " + line)
        sys.stdout.flush()

    def _fmt(self, err, test):
        etype, value, tb = err
        # Assertion failures: the message is what matters; errors: full trace.
        if issubclass(etype, AssertionError):
            lines = traceback.format_exception(etype, value, tb, limit=-2)
        else:
            lines = traceback.format_exception(etype, value, tb)
        return "".join(lines)

    def startTest(self, test):
        super().startTest(test)
        self.current = dict(test=test, failed=False, details=[], skip=None,
                            t0=time.monotonic())
        limit = getattr(test, "TIMEOUT", None) or \
            int(os.environ.get("BMX_TEST_TIMEOUT", "120"))
        signal.alarm(int(limit))

    def stopTest(self, test):
        signal.alarm(0)
        super().stopTest(test)
        cur, self.current = self.current, None
        if cur is None:
            return
        secs = time.monotonic() - cur["t0"]
        if cur["failed"]:
            self._emit(test_name(test), "not ok", cur["details"], secs=secs)
        else:
            self._emit(test_name(test), "ok", skip=cur["skip"], secs=secs)

    def _record_failure(self, test, err, prefix=""):
        text = prefix + self._fmt(err, test)
        if self.current is not None and self.current["test"] is test:
            self.current["failed"] = True
            self.current["details"].append(text)
        else:
            # class/module fixture problems: reported on their own
            self._emit(test_name(test), "not ok", [text])

    def addError(self, test, err):
        super().addError(test, err)
        self._record_failure(test, err)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record_failure(test, err)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._record_failure(test, err,
                                 prefix="subtest %s:\n" % subtest._subDescription())

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if self.current is not None and self.current["test"] is test:
            self.current["skip"] = reason
        else:
            self._emit(test_name(test), "ok", skip=reason)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.current["failed"] = True
        self.current["details"].append("unexpected success")

    def wasSuccessful(self):
        return self.nfailed == 0


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="bin")
    ap.add_argument("--build", default="build")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="print each test's run time")
    args = ap.parse_args()

    harness.configure(args.bin, args.build)
    harness.install_signal_handlers()
    signal.signal(signal.SIGALRM, _alarm)

    exe = harness.backupmx_path()
    if not os.access(exe, os.X_OK):
        print("Bail out! %s not found or not executable" % exe, flush=True)
        return 2

    loader = unittest.TestLoader()
    try:
        suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    except Exception:
        print("Bail out! test discovery failed", flush=True)
        traceback.print_exc()
        return 2

    # "a,b": the tests whose id contains any of the substrings
    flt = os.environ.get("BMX_TEST_FILTER", "")
    subs = [x for x in flt.split(",") if x]
    tests = []
    load_errors = 0
    for t in iter_tests(suite):
        # failed imports show up as _FailedTest: always run (they fail)
        if isinstance(t, unittest.loader._FailedTest):
            load_errors += 1
            tests.append(t)
        elif not subs or any(x in t.id() for x in subs):
            tests.append(t)
    if not tests:
        print("# no integration test matches BMX_TEST_FILTER=%r" % flt)
        print("1..0")
        return 0

    result = TapResult(verbose=args.verbose)
    t0 = time.monotonic()
    unittest.TestSuite(tests).run(result)
    print("1..%d" % result.n)
    print("# integration: %d passed, %d failed, %d skipped in %.1fs (%s)"
          % (result.passed, result.nfailed, result.nskipped,
             time.monotonic() - t0, args.bin), flush=True)
    return 0 if result.nfailed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
