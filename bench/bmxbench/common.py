"""Measurement plumbing shared by the workloads: CPU accounting from
/proc/stat, running a load generator with its own rusage, process trees,
statistics and the result table.

Every process started here is tracked and stopped by its PID (atexit as
the last resort); nothing is ever killed by name.
"""

import atexit
import contextlib
import os
import resource
import signal
import statistics
import subprocess
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, "build", "bench")
CLK_TCK = os.sysconf("SC_CLK_TCK")

_procs = []


def _cleanup():
    for p in list(_procs):
        stop_proc(p)


atexit.register(_cleanup)


class BenchFailure(Exception):
    """A workload could not produce a valid result (lost mail, a peer that
    would not start, a wrong count): reported as FAIL, never as a number."""


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


# --- CPU ------------------------------------------------------------------

def settle_disk():
    """Writes back what earlier runs left dirty in the page cache, so that
    the kernel's writeback (30 s after the fact) does not land inside the
    next system's measurement. Called before each measured run, outside
    the timing."""
    os.sync()


def busy_cpu():
    """Seconds of non-idle CPU of the whole machine so far: user + nice +
    system + irq + softirq + steal (iowait and idle excluded)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


def proc_cpu(pid):
    """utime + stime (seconds) of one live process, or 0."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


# --- processes --------------------------------------------------------------

def spawn(args, stdout=None, stderr=None, **kw):
    """Popen that is tracked for cleanup."""
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                         stdout=stdout if stdout is not None else subprocess.DEVNULL,
                         stderr=stderr if stderr is not None else subprocess.DEVNULL,
                         **kw)
    _procs.append(p)
    return p


def stop_proc(p, sig=signal.SIGTERM, timeout=10):
    """Stops a process we started, by its PID."""
    if p in _procs:
        _procs.remove(p)
    if p.poll() is None:
        with contextlib.suppress(OSError):
            p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                p.kill()
            p.wait(5)


def run_timed(args, timeout, outfile=None, env=None, cwd=None, preexec_fn=None):
    """Runs ARGS to completion. Returns (rc, wall seconds, own CPU seconds
    (user+sys from wait4), output text)."""
    out = open(outfile, "wb+") if outfile else subprocess.PIPE
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT, env=env, cwd=cwd,
                         preexec_fn=preexec_fn)
    _procs.append(p)
    deadline = t0 + timeout
    status = ru = None
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = -9
            _procs.remove(p)
            raise BenchFailure("%s: timed out after %ss" % (args[0], timeout))
        time.sleep(0.005)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    _procs.remove(p)
    if outfile:
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
        out.close()
    else:
        text = p.stdout.read().decode("utf-8", "replace")
        p.stdout.close()
    return p.returncode, wall, ru.ru_utime + ru.ru_stime, text


def tree_cpu(root):
    """CPU seconds used so far by ROOT's process tree: utime + stime of
    every live member plus cutime + cstime (what they reaped): on a shared
    machine this is the daemon's own cost, whatever else runs."""
    total = 0.0
    for p in children_tree(root):
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / CLK_TCK
        except (OSError, IndexError, ValueError):
            continue
    return total


def children_tree(pid):
    """PID and all its descendants (from /proc)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open("/proc/%s/stat" % d) as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
    out, unvisited = [], [pid]
    while unvisited:
        p = unvisited.pop()
        out.append(p)
        unvisited.extend(c for c, pp in parent.items() if pp == p)
    return out


def mem_of(pids):
    """(sum of RSS, sum of PSS) in KiB over PIDS (smaps_rollup)."""
    rss = pss = 0
    for p in pids:
        with contextlib.suppress(OSError):
            with open("/proc/%d/smaps_rollup" % p) as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
    return rss, pss


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, n)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def wait_until(pred, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise BenchFailure("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


def compile_c(src, out, extra=()):
    """Builds a bench helper into build/bench/ when missing or stale."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-Wall", "-o", out, src] + list(extra), check=True)
    return out


# --- statistics -------------------------------------------------------------

def summarize(values):
    """(median, min, max) or None."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def fmt_num(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return "{:,.0f}".format(v)
    if a >= 100:
        return "%.0f" % v
    if a >= 10:
        return "%.1f" % v
    return "%.2f" % v
