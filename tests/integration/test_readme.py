"""The README's commands run as written.

Lines starting with "$ " in its indented blocks run as any user from the
top of the source tree: each is run here with bash and must exit 0.
`make deb` is the one exception: it takes minutes and test_install runs
that same command (and installs what it built), so this test only checks
that test_install still does. Lines starting with "# " need root on a
real mail server; of those, every bmxq subcommand and every option given
to backupmx, bmxq and fetchd must be one the program's usage names.
The quick start must be the two commands, and .ci/run must call the same
test command."""

import os
import re
import subprocess
import unittest

import harness

ROOT = harness.ROOT
README = os.path.join(ROOT, "README")
COVERED_ELSEWHERE = {"make deb": "test_install.py"}


def readme_commands(prefix):
    out = []
    with open(README) as f:
        for n, line in enumerate(f, 1):
            m = re.match(r"^ {2,}" + re.escape(prefix) + r" (.+)$", line.rstrip("\n"))
            if m:
                out.append((n, m.group(1)))
    return out


def usage_of(prog):
    r = subprocess.run([os.path.join(harness.BIN, prog), "-h"], capture_output=True,
                       text=True, timeout=30)
    return r.stdout + r.stderr


class Readme(unittest.TestCase):
    def test_quick_start_is_two_commands_and_ci_runs_the_second(self):
        with open(README) as f:
            text = f.read()
        block = text.split("Quick start", 1)[1].split("\n\n", 2)[1]
        cmds = [l.split("#")[0].strip() for l in block.splitlines() if l.strip()]
        self.assertEqual(cmds, ["make run", "make check"])
        with open(os.path.join(ROOT, ".ci", "run")) as f:
            ci = [l.strip() for l in f if l.strip() and not l.startswith("#")]
        self.assertEqual(ci[-1], "make check")

    def test_user_commands_run_as_written(self):
        cmds = readme_commands("$")
        self.assertGreaterEqual(len(cmds), 3, cmds)
        for n, cmd in cmds:
            with self.subTest(line=n, cmd=cmd):
                if cmd in COVERED_ELSEWHERE:
                    other = os.path.join(os.path.dirname(__file__), COVERED_ELSEWHERE[cmd])
                    with open(other) as f:
                        text = f.read()
                    self.assertTrue(all('"%s"' % w in text for w in cmd.split()),
                                    "%s no longer runs %r" % (COVERED_ELSEWHERE[cmd], cmd))
                    continue
                r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT,
                                   capture_output=True, text=True, timeout=600)
                self.assertEqual(r.returncode, 0, "README line %d: %s\n%s%s"
                                 % (n, cmd, r.stdout[-2000:], r.stderr[-2000:]))

    def test_password_hash_command_gives_a_usable_hash(self):
        cmd = [c for _, c in readme_commands("$") if "passwd" in c]
        self.assertEqual(len(cmd), 1, cmd)
        r = subprocess.run(["bash", "-c", cmd[0]], capture_output=True, text=True, timeout=60)
        self.assertRegex(r.stdout.strip(), r"^\$6\$[./0-9A-Za-z]+\$[./0-9A-Za-z]{86}$")

    def test_root_commands_name_real_options(self):
        usage = {p: usage_of(p) for p in ("backupmx", "bmxq", "fetchd")}
        checked = 0
        for n, cmd in readme_commands("#"):
            words = cmd.split()
            if "--" in words:               # runuser -u fetchd -- fetchd ...
                words = words[words.index("--") + 1:]
            if not words or words[0] not in usage:
                continue
            prog, args = words[0], words[1:]
            with self.subTest(line=n, cmd=cmd):
                for a in args:
                    if re.fullmatch(r"-[A-Za-z0-9]+", a):
                        for ch in a[1:]:
                            self.assertRegex(usage[prog], r"\[-[A-Za-z0-9]*%s" % re.escape(ch),
                                             "%s has no option -%s" % (prog, ch))
                if prog == "bmxq" and args:
                    self.assertRegex(usage[prog], r"(?m)^  %s\b" % re.escape(args[0]))
                checked += 1
        self.assertGreater(checked, 10)
