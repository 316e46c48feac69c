"""bench/results/*.md: the table (median, min, max, ratio), the targets of
issue 8, the machine and the versions."""

import collections
import os
import platform
import subprocess
import time

from .common import fmt_num, summarize
from . import systems


def sh(cmd):
    cp = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL)
    return cp.stdout.decode("utf-8", "replace").strip()


def machine():
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    disk = sh("findmnt -no SOURCE,FSTYPE,OPTIONS -T /tmp")
    dev = disk.split()[0] if disk else ""
    base = os.path.basename(dev)
    rot = sh("cat /sys/block/%s/queue/rotational 2>/dev/null" % base)
    model = sh("cat /sys/block/%s/device/model 2>/dev/null" % base) or \
        sh("lsblk -dno MODEL %s 2>/dev/null" % dev)
    sched = sh("cat /sys/block/%s/queue/scheduler 2>/dev/null" % base)
    return [
        ("nproc", sh("nproc")),
        ("CPU", cpu),
        ("memory", mem),
        ("kernel", platform.release() + " " + platform.machine()),
        ("OS", sh(". /etc/os-release && echo $PRETTY_NAME")),
        ("spool disk (/tmp)", "%s; rotational=%s%s%s" % (
            disk, rot or "?", ", model " + model if model else "",
            ", scheduler " + sched if sched else "")),
        ("virtualization", sh("systemd-detect-virt 2>/dev/null") or "unknown"),
        ("load average at the end", sh("cat /proc/loadavg")),
    ]


def versions():
    v = [("backupmx", systems.Backupmx.version()),
         ("fetchd", sh(os.path.join(systems.BIN, "fetchd") + " -V | head -1")),
         ("Postfix (backup MX, smtp-source, smtp-sink)", systems.pkg_version("postfix")),
         ("OpenSMTPD (unpacked .deb)", systems.opensmtpd_version()),
         ("Dovecot", systems.pkg_version("dovecot-core")),
         ("fetchmail", systems.pkg_version("fetchmail")),
         ("getmail6", systems.pkg_version("getmail6")),
         ("Python", platform.python_version()),
         ("cc", sh("${CC:-cc} --version | head -1"))]
    return v


def ref_for(r):
    """The row a ratio is taken against: backupmx for the MTAs, fetchd
    (same protocol; SMTP for the SMTP/LMTP pullers, MDA for MDA) for the
    pullers."""
    if r["workload"].startswith("serve"):
        return "backupmx: " + r["system"].split(": ", 1)[1]
    if r["workload"].startswith("queue scale"):
        return "backupmx, 0 queued"
    if r["workload"].startswith("drain") and r["system"].startswith("floor:"):
        return "fetchd pop3->mda"
    if r["workload"].startswith("drain"):
        client, rest = r["system"].split(" ", 1)
        proto, dest = rest.split("->")
        dest = dest.split()[0]
        return "fetchd %s->%s" % (proto, "mda" if dest == "mda" else "smtp")
    if r["workload"].startswith("disk"):
        return None
    if "(TLS)" in r["system"]:
        return "backupmx (TLS)"
    return "backupmx"


def ratio(better, ref, val):
    """How many times better the reference (backupmx/fetchd) is: > 1 means
    it wins."""
    if ref is None or val is None or ref == 0 or val == 0:
        return None
    return ref / val if better == "higher" else val / ref


def aggregate(rows):
    groups = collections.OrderedDict()
    for r in rows:
        key = (r["workload"], r["metric"], r["system"])
        groups.setdefault(key, []).append(r)
    out = collections.OrderedDict()
    for (wl, metric, system), rs in groups.items():
        s = summarize([x["value"] for x in rs])
        out[(wl, metric, system)] = dict(
            workload=wl, metric=metric, system=system, unit=rs[0]["unit"],
            better=rs[0]["better"], runs=len(rs), med=s[0], min=s[1], max=s[2],
            n=rs[0]["n"], extra=rs[-1]["extra"])
    return out


def table(agg):
    lines = ["| workload | metric | system | runs | median | min | max | unit | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, a in agg.items():
        ref = ref_for(a)
        refa = agg.get((a["workload"], a["metric"], ref)) if ref else None
        rt = ratio(a["better"], refa["med"] if refa else None, a["med"])
        lines.append("| %s | %s | %s | %d | **%s** | %s | %s | %s | %s |" % (
            a["workload"], a["metric"], a["system"], a["runs"], fmt_num(a["med"]),
            fmt_num(a["min"]), fmt_num(a["max"]), a["unit"],
            ("%.2fx" % rt) if rt is not None else ""))
    return "\n".join(lines)


def med(agg, wl_prefix, metric, system):
    for (wl, m, s), a in agg.items():
        if wl.startswith(wl_prefix) and m == metric and s == system:
            return a["med"]
    return None


def targets(agg, cfg):
    out = []

    def check(label, value, goal, fmt="%.2fx"):
        if value is None:
            out.append("| %s | not measured | %s | - |" % (label, goal[1]))
            return
        if goal[0] is None:      # context for a target, not one itself
            out.append("| %s | %s | %s | |" % (label, fmt % value, goal[1]))
            return
        ok = value >= goal[0] if goal[2] == ">=" else value <= goal[0]
        out.append("| %s | %s | %s | %s |" % (label, fmt % value, goal[1],
                                              "met" if ok else "**MISSED**"))

    def rate_ratio(wl, metric, a, b, inverse=False):
        x, y = med(agg, wl, metric, a), med(agg, wl, metric, b)
        if not x or not y:
            return None
        return y / x if inverse else x / y

    s20, n20, l20 = cfg["intake"][0][:3]
    s1, n1, l1 = cfg["intake"][1][:3]
    sL, nL, lL = cfg["intake"][2][:3]
    w20 = "intake -s %d -m %d -l %d" % (s20, n20, l20)
    w1 = "intake -s %d -m %d -l %d" % (s1, n1, l1)
    wL = "intake -s %d -m %d -l %d" % (sL, nL, lL)
    out.append("| target | measured | goal | |")
    out.append("|---|---|---|---|")
    check("intake 20 sessions vs Postfix", rate_ratio(w20, "accept rate", "backupmx", "postfix"), (5, ">= 5x", ">="))
    check("intake 20 sessions vs OpenSMTPD (shim)", rate_ratio(w20, "accept rate", "backupmx", "opensmtpd"), (2, ">= 2x", ">="))
    for w, lab in ((w1, "1 session"), (wL, "100 KB")):
        check("intake %s vs Postfix" % lab, rate_ratio(w, "accept rate", "backupmx", "postfix"), (2, ">= 2x", ">="))
        check("intake %s vs OpenSMTPD" % lab, rate_ratio(w, "accept rate", "backupmx", "opensmtpd"), (2, ">= 2x", ">="))
    for w, lab in ((w20, "20 sessions"), (w1, "1 session"), (wL, "100 KB")):
        check("CPU per message vs Postfix, %s" % lab,
              rate_ratio(w, "CPU per 1000 msgs", "backupmx", "postfix", inverse=True),
              (10, ">= 10x less", ">="))
    for w, lab in ((w20, "20 sessions"), (w1, "1 session"), (wL, "100 KB")):
        check("daemon's own CPU per message vs Postfix's, %s" % lab,
              rate_ratio(w, "daemon CPU per 1000 msgs", "backupmx", "postfix", inverse=True),
              (10, ">= 10x less", ">="))
    # The most "CPU per message vs Postfix" could reach on this machine:
    # Postfix's daemon CPU over bench/nullsmtp.c's (the floor).
    floor = systems.NullSmtp.label
    for w, lab in ((w20, "20 sessions"), (w1, "1 session"), (wL, "100 KB")):
        pf, fl = med(agg, w, "daemon CPU per 1000 msgs", "postfix"), \
            med(agg, w, "daemon CPU per 1000 msgs", floor)
        check("%s: Postfix's daemon CPU / the floor's (10x is the target)" % lab,
              pf / fl if pf and fl else None, (None, "(for scale)", None))
    check("flush to smtp-sink vs Postfix",
          rate_ratio("flush %d x %d B to smtp-sink" % (n20, l20), "flush rate",
                     "backupmx", "postfix"), (2, ">= 2x", ">="))
    for wl in sorted({w for (w, _m, _s) in agg if w.startswith("flush ")
                      and w.endswith(" to a Postfix primary")},
                     key=lambda w: -int(w.split()[1])):
        check("%s vs Postfix" % wl, rate_ratio(wl, "flush rate", "backupmx", "postfix"),
              (1.5, ">= 1.5x", ">="))
        ref = [sy for (w, m, sy) in agg if w == wl and m == "flush rate"
               and sy.startswith("reference")]
        for sy in ref:
            check("%s: backupmx's rate / the primary's intake from %s"
                  % (wl, sy.split(": ", 1)[1]),
                  rate_ratio(wl, "flush rate", "backupmx", sy), (None, "(for scale)", None))
    if not any(w.endswith(" to a Postfix primary") for (w, _m, _s) in agg):
        check("flush to a Postfix primary vs Postfix", None, (1.5, ">= 1.5x", ">="))
    best_fd = max([v for v in (med(agg, "drain", "drain rate", "fetchd %s->%s" % (p, d))
                               for p in ("imap", "pop3") for d in ("smtp", "lmtp"))
                   if v] or [0]) or None
    gm = med(agg, "drain", "drain rate", "getmail imap->lmtp")
    fm = max([v for v in (med(agg, "drain", "drain rate", "fetchmail %s->smtp" % p)
                          for p in ("imap", "pop3")) if v] or [0]) or None
    check("drain: fetchd best SMTP/LMTP vs getmail IMAP->LMTP",
          best_fd / gm if best_fd and gm else None, (5, ">= 5x", ">="))
    check("drain: fetchd best SMTP/LMTP vs fetchmail's best SMTP",
          best_fd / fm if best_fd and fm else None, (50, ">= 50x", ">="))
    check("drain: fetchd POP3->MDA (mda_concurrency 4) vs fetchmail POP3->MDA",
          rate_ratio("drain", "drain rate", "fetchd pop3->mda (mda_concurrency 4)",
                     "fetchmail pop3->mda"), (2, ">= 2x", ">="))
    check("drain: fetchd POP3->MDA vs fetchmail POP3->MDA",
          rate_ratio("drain", "drain rate", "fetchd pop3->mda", "fetchmail pop3->mda"),
          (2, ">= 2x", ">="))
    from .workloads import MDA_ALONE
    check("drain: the MDA alone, one at a time, vs fetchmail POP3->MDA (the most a "
          "puller that runs one MDA at a time can reach)",
          rate_ratio("drain", "drain rate", MDA_ALONE, "fetchmail pop3->mda"),
          (None, "(for scale)", None))
    levels = cfg.get("qscale_levels") or []
    if len(levels) > 1:
        from .workloads import level_name
        top = "backupmx, %s queued" % level_name(levels[-1])
        check("intake at %s queued vs empty queue" % level_name(levels[-1]),
              rate_ratio("queue scale: intake", "accept rate", top, "backupmx, 0 queued"),
              (0.8, ">= 0.8 (within 20%)", ">="))
    if any(wl.startswith("serve") for (wl, _m, _s) in agg):
        for c in ("fetchmail pop3->mda", "fetchmail imap->mda", "fetchd imap->smtp"):
            check("catch-all server vs Dovecot, same Maildir, %s (issue 5)" % c,
                  rate_ratio("serve", "drain rate", "backupmx: " + c, "Dovecot: " + c),
                  (1, ">= 1x (as fast as Dovecot)", ">="))
    for (wl, m, s), a in agg.items():
        if wl.startswith("10000 idle SMTP sessions") and m == "PSS total" and s == "backupmx":
            check("10,000 idle plain SMTP sessions, total PSS", a["med"],
                  (100, "< 100 MiB", "<="), "%.1f MiB")
    fs = med(agg, "disk", "fdatasync (4 KiB appends)", "disk")
    bmx = med(agg, w20, "accept rate", "backupmx")
    if fs and bmx:
        out.append("| backupmx intake (20 sessions) / disk fdatasync rate | %.2fx | > 1x (group commit) | %s |"
                   % (bmx / fs, "met" if bmx > fs else "**MISSED**"))
    return "\n".join(out)


def render(rows, failures, notes, rounds, quick, elapsed, cfg, mtas):
    agg = aggregate(rows)
    parts = []
    parts.append("# backupmx benchmarks%s\n" % (" (QUICK: tiny sizes, smoke test only -- "
                                                 "the numbers mean nothing)" if quick else ""))
    parts.append("Generated by `bench/run%s` on %s in %.0f s; %d round%s, the systems "
                 "alternating within each round (A/B/C, A/B/C, ...). One fresh state "
                 "directory per system and run, all on 127.0.0.1.\n"
                 % (" --quick" if quick else "", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    elapsed, rounds, "" if rounds == 1 else "s"))
    if failures:
        parts.append("## FAILURES (no number is reported for these)\n")
        parts.extend("- %s" % f for f in failures)
        parts.append("")
    parts.append("## Results\n")
    parts.append("ratio = how many times better backupmx (the MTA rows) or fetchd "
                 "(the drain rows: same protocol, SMTP for SMTP/LMTP clients, MDA for MDA) "
                 "is than that row: reference / row for rates, row / reference for "
                 "CPU, time and memory. > 1 means backupmx/fetchd wins. In the queue "
                 "scale rows the reference is backupmx on an empty queue: > 1 means "
                 "that level is slower than the empty queue.\n")
    parts.append(table(agg))
    parts.append("")
    parts.append("## Targets of issue 8\n")
    parts.append(targets(agg, cfg))
    parts.append("")
    parts.append("Where a target is missed, `bench/results/ANALYSIS.md` says what the "
                 "profile shows is the limit.\n")
    parts.append("## Method\n")
    parts.append(METHOD.strip())
    parts.append("")
    if notes:
        parts.append("## Notes\n")
        parts.extend("- %s" % n for n in notes)
        parts.append("")
    parts.append("## Details of the last run of each row\n")
    for a in agg.values():
        if a["extra"] and not a["extra"].startswith("whole machine") \
                and not a["extra"].startswith("delivered") \
                and not a["extra"].startswith("the puller"):
            parts.append("- %s / %s / %s: %s" % (a["workload"], a["system"], a["metric"], a["extra"]))
    parts.append("")
    parts.append("## Machine\n")
    parts.extend("- %s: %s" % kv for kv in machine())
    parts.append("")
    parts.append("## Versions\n")
    parts.extend("- %s: %s" % kv for kv in versions())
    parts.append("")
    return "\n".join(parts)


METHOD = """
- **Every measured run** starts after a sync(2), outside its timing: what the runs before
  it left dirty in the page cache would otherwise be written back (30 s later) inside it.
- **Intake** (primary down): `smtp-source -s S -m N -l L -f a@b.test -t user@example.test`
  into each backup MX, whose primary port is not listening. Rate = N / smtp-source's wall
  time (every message acknowledged with 250). CPU = whole-machine busy CPU from /proc/stat
  (user+nice+system+irq+softirq+steal) from the start until the queue holds all N (Postfix:
  also until qmgr has emptied incoming/), minus smtp-source's own user+sys (wait4), per
  1000 messages. "daemon CPU" is the system's own process tree instead (utime + stime
  + cutime + cstime from /proc over the master/daemon and its children): the machine is
  shared with other sessions' test runs, which the whole-machine figure also counts.
  Durability: backupmx answers 250 after its group commit (fdatasync of the
  BDB log, message bodies fsync'd); Postfix's cleanup and OpenSMTPD's queue_fs fsync each
  message before 250. Checked afterwards: backupmx `qtool SPOOL count` after stopping the
  daemon, Postfix `postqueue -p`, OpenSMTPD the message directories in its queue; fewer
  than N is a FAIL.
- **The MDA alone** ("floor: the MDA alone" row): the drains' MDA command
  (`/bin/sh -c 'cat >/dev/null && echo >> FILE'`) run N times one after the other by a
  shell loop, a message on its stdin each time, with no mailbox and no puller. A puller
  that waits for each MDA before the next (fetchmail; fetchd at its default
  `mda_concurrency = 1`) cannot deliver faster than this.
- **The CPU floor** ("floor: bare responder" rows): `bench/nullsmtp.c` gets the same
  intake. It answers the conversation, appends the messages that ended in one loop pass
  to one file and makes them durable with one fdatasync before their 250s, and does
  nothing else (no queue, no index, no log, no dot-unstuffing). It is not an MTA: its CPU
  per message is what the kernel charges any MTA for the connection, the round trips and
  the sync, so "Postfix's daemon CPU / the floor's" is the most that "CPU per message vs
  Postfix" could ever reach on this machine.
- **Flush**: after each 20-session intake, start `smtp-sink -u postfix -c 127.0.0.1:PORT 1000`
  on the primary's port and trigger the queue run (backupmx: `bmxq flush all`, Postfix:
  `postqueue -f`); time from the sink's start until the queue is empty (`bmxq stats` /
  no queue files). The end is found by polling what the primary has accepted (the sink's
  counter; for the Postfix primary below, cleanup's `message-id=` lines in its maillog)
  and the queue (`bmxq stats`, which walks the whole queue, or the Postfix queue
  directories) only every 2 s until the primary has all N, then every 10 ms until the
  queue is empty: polling `bmxq stats` all along would load the daemon being measured. Both systems at their default delivery concurrency (backupmx 10
  connections per destination, Postfix 20).
- **Flush to a Postfix primary**: the queue left by the 1-session intake (5,000 x 4 KB,
  every round) is flushed, as above, to a second private Postfix listening on the
  primary's port: the final destination of example.test (`relay_domains = example.test`,
  `transport_maps = inline:{ example.test=discard:delivered }`), so every message goes
  through its smtpd, cleanup (fsync before 250) and qmgr and is then delivered by
  discard(8), the cheapest real delivery agent. Time from the moment that Postfix answers
  220 (its own start-up, 1-2 s, is not counted) until the backup's queue is empty; the
  primary's maillog must then show N `status=sent` lines from discard. The row
  "reference" is that primary fed by smtp-source -s 20 -m N straight into a fresh
  instance, timed until it has accepted N: one connection per message, no pipelining,
  so a backup that keeps its connections open and pipelines can beat it. With `bench/run
  --pflush-20k` the 20,000-message queue of the 20-session intake is flushed to it as
  well, from a copy taken right after the intake (backupmx: the stopped daemon's whole
  spool; Postfix: its queue directories once qmgr has settled; `postfix start` renames
  the copies to match their inodes) into a fresh instance of the same backup: issue 8's
  wording, but ~4-5 more minutes, over the 20-minute budget. The queue's size changes
  how long the flush lasts, hardly its rate: on 2026-11-29 (load 3-10) 20,000 went at
  363 msg/s (backupmx) and 529 (Postfix), 5,000 at 312 and 484.
- **Drain**: "client CPU" is the puller's own user+sys including the MDA processes it
  reaped (wait4). N messages of ~4 KB put into one Maildir of a private Dovecot (plaintext
  POP3/IMAP on loopback, index built before the clock starts); each client fetches and
  deletes all of them, delivering to one `smtp-sink` (SMTP), one `smtp-sink -L` (LMTP) or
  an MDA `sh -c 'cat >/dev/null && echo >> COUNT'` (one line per delivery). Checked: the
  Maildir is empty and the sink counter (or COUNT) grew by N. fetchmail's SMTP forwarding
  runs fewer messages, 100 in the full run (it stalls ~44 ms per message, a fixed timer:
  BASELINES.md (c); 300 until 2026-11-29, same rate). fetchd runs at its defaults
  (one MDA program at a time, like fetchmail), and once more with `mda_concurrency = 4`
  (up to 4 MDA programs at once; fetchmail has no such setting).
- **Queue scale** (backupmx only): one spool filled incrementally to 100,000 and then
  1,000,000 queued messages with `build/tests/qfill` (the daemon's own queue code, daemon
  stopped, 2,000 messages per transaction: ~400-byte inline bodies, one recipient each,
  deferred after one failed attempt with the next attempt 1-2 hours ahead, i.e. mail
  waiting out a primary's outage); the daemon is started on it at each level (primary
  down, `retry_min = 30m` so that mail taken in earlier is not retried during the
  measurement) and takes `smtp-source -s 20 -m 5000 -l 4096` per round. Rate = 5000 /
  smtp-source's wall time; "daemon CPU" as for intake. `bmxq stats` is timed after each
  intake and its message count must equal what was filled plus taken in; `bmxq list |
  tail -1` is timed once per level (its request count must match); "daemon start" is
  from spawning the daemon to its SMTP banner. The "0 queued" rows come from a fresh
  daemon on an empty spool (same settings) that runs the same intake just before each
  round of each level (A/B/A/B).
- **Floor**: `bench/fsyncbench.c` on the spool's filesystem: 4 KiB appends + fdatasync,
  create + 4 KiB + fsync + close, 1 MiB sequential writes + one fsync.
- **Idle sessions**: open N TCP sessions one after another, read each 220 banner (TLS:
  EHLO, STARTTLS, handshake), hold them 2 s, sum PSS (and RSS) from
  /proc/PID/smaps_rollup over the daemon's whole process tree. Postfix with
  `default_process_limit` raised above N (one smtpd per session).
"""
