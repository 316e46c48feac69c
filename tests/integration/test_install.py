"""Installation and packaging (issue 7).

Install   `make install DESTDIR=TMP PREFIX=/usr` installs exactly the expected
          files with the right modes and never overwrites a configuration;
          every installed program prints its version and has a man page;
          the man pages render without a warning (`groff -ww -z`) and with
          `man -l`; the shipped configuration passes `backupmx -n`.
Units     the unit files, installed with every path pointing into a temporary
          tree, pass `systemd-analyze verify` (which checks that the programs
          and man pages they name exist); the sysv script parses.
Package   only when CI=true or as root, and only on a machine where backupmx
          is not installed and no user `backupmx` exists: `make deb`, lintian
          without errors, `dpkg -i` (user, group, spool 0750
          backupmx:backupmx, conffiles, `backupmx -n` on the installed
          configuration, unit enabled; fetchd's user and state, its units
          not enabled), `dpkg -r` (users and spool kept), `dpkg -P` (spool
          and users gone, packages unknown). The fetchd package is included
          once debian/ builds it. Whatever happens, the packages are purged
          and the .deb files removed at the end.

The tests are the same for every build variant: they run with the normal
build only (--bin bin), and skip under the sanitizer variant.

Needs: make, groff-base, man-db, systemd (systemd-analyze); for the package
test also dpkg-dev, debhelper, fakeroot and lintian.
"""

import atexit
import contextlib
import glob
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
import unittest

import harness

ROOT = harness.ROOT
IS_CI = os.environ.get("CI", "").lower() == "true"


def run(cmd, timeout=600, env=None, **kw):
    """Runs CMD (a list) in ROOT; returns the CompletedProcess (text)."""
    e = dict(os.environ)
    e.update(env or {})
    e.setdefault("LC_ALL", "C.UTF-8")
    return subprocess.run(cmd, cwd=kw.pop("cwd", ROOT), env=e, timeout=timeout,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, **kw)


def makefile_version():
    with open(os.path.join(ROOT, "Makefile")) as f:
        m = re.search(r"^VERSION\s*:?=\s*(\S+)", f.read(), re.M)
    return m.group(1) if m else None


def normal_variant():
    return os.path.basename(harness.BIN) == "bin"


def tree(top):
    """Relative paths of every file and symlink under TOP."""
    out = set()
    for d, _, files in os.walk(top):
        for f in files:
            out.add(os.path.relpath(os.path.join(d, f), top))
    return out


# What `make install DESTDIR=X PREFIX=/usr` must install (path -> mode).
BASE_FILES = {
    "usr/sbin/backupmx": 0o755,
    "usr/bin/bmxq": 0o755,
    "usr/share/man/man8/backupmx.8": 0o644,
    "usr/share/man/man5/backupmx.conf.5": 0o644,
    "usr/share/man/man1/bmxq.1": 0o644,
    "etc/backupmx/backupmx.conf": 0o644,
    "etc/backupmx/backupmx.conf.example": 0o644,
    "usr/share/doc/backupmx/README": 0o644,
    "usr/share/doc/backupmx/examples/backupmx.service": 0o644,
    "usr/share/doc/backupmx/examples/backupmx.init": 0o755,
}
# ... and, once fetchd is built, also these.
FETCHD_FILES = {
    "usr/bin/fetchd": 0o755,
    "usr/share/man/man8/fetchd.8": 0o644,
    "usr/share/man/man5/fetchd.conf.5": 0o644,
    "etc/backupmx/fetchd.conf.example": 0o644,
    "usr/share/doc/backupmx/examples/fetchd.service": 0o644,
    "usr/share/doc/backupmx/examples/fetchd.timer": 0o644,
    "usr/share/doc/backupmx/examples/fetchd@.service": 0o644,
    "usr/share/doc/backupmx/examples/fetchd.cron": 0o644,
}


@unittest.skipUnless(normal_variant(), "install tests run with the normal build only")
class Install(unittest.TestCase):
    TIMEOUT = 300

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="bmx-install.")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.dest = os.path.join(cls.tmp, "dest")
        cls.result = run(["make", "--no-print-directory", "install",
                          "DESTDIR=" + cls.dest, "PREFIX=/usr"], timeout=600)

    def setUp(self):
        self.assertEqual(self.result.returncode, 0,
                         "make install failed:\n" + self.result.stdout[-3000:])

    def has_fetchd(self):
        return os.path.exists(os.path.join(self.dest, "usr/bin/fetchd"))

    def expected(self):
        want = dict(BASE_FILES)
        if self.has_fetchd():
            want.update(FETCHD_FILES)
        return want

    def test_file_list(self):
        want = self.expected()
        got = tree(self.dest)
        missing = sorted(set(want) - got)
        extra = sorted(got - set(want))
        self.assertEqual((missing, extra), ([], []),
                         "missing: %s\nunexpected: %s" % (missing, extra))
        for path, mode in want.items():
            st = os.lstat(os.path.join(self.dest, path))
            self.assertTrue(stat.S_ISREG(st.st_mode), path)
            self.assertEqual(stat.S_IMODE(st.st_mode), mode,
                             "%s: mode %o" % (path, stat.S_IMODE(st.st_mode)))

    def test_no_fetchd_leftovers(self):
        """fetchd's files come with the fetchd program, or not at all."""
        if self.has_fetchd():
            self.skipTest("fetchd is built")
        got = tree(self.dest)
        self.assertEqual(sorted(got & set(FETCHD_FILES)), [])

    def test_config_not_overwritten(self):
        conf = os.path.join(self.dest, "etc/backupmx/backupmx.conf")
        example = os.path.join(self.dest, "etc/backupmx/backupmx.conf.example")
        with open(conf, "w") as f:
            f.write("# edited by the operator\n")
        with open(example, "w") as f:
            f.write("# stale\n")
        r = run(["make", "--no-print-directory", "install",
                 "DESTDIR=" + self.dest, "PREFIX=/usr"])
        self.assertEqual(r.returncode, 0, r.stdout)
        with open(conf) as f:
            self.assertEqual(f.read(), "# edited by the operator\n")
        with open(example) as f, open(os.path.join(ROOT, "conf/backupmx.conf.example")) as g:
            self.assertEqual(f.read(), g.read(), "the .example is always refreshed")
        shutil.copy(os.path.join(ROOT, "conf/backupmx.conf.system"), conf)

    def test_versions(self):
        version = makefile_version()
        progs = ["usr/sbin/backupmx", "usr/bin/bmxq"]
        if self.has_fetchd():
            progs.append("usr/bin/fetchd")
        for p in progs:
            r = run([os.path.join(self.dest, p), "-V"], timeout=10)
            self.assertEqual(r.returncode, 0, "%s -V: %s" % (p, r.stdout))
            # "fetchd 0.1.0 (libetpan 1.9)": extra words after the version are fine
            self.assertEqual(r.stdout.split()[:2], [os.path.basename(p), version], r.stdout)

    def test_each_program_has_a_man_page(self):
        mans = {os.path.basename(m).rsplit(".", 1)[0]
                for m in glob.glob(os.path.join(self.dest, "usr/share/man/man*/*"))}
        for d in ("usr/sbin", "usr/bin"):
            for p in os.listdir(os.path.join(self.dest, d)):
                self.assertIn(p, mans, "%s/%s has no man page" % (d, p))

    def test_man_pages_render_clean(self):
        pages = sorted(glob.glob(os.path.join(self.dest, "usr/share/man/man*/*")))
        self.assertTrue(pages)
        for page in pages:
            with self.subTest(page=os.path.basename(page)):
                r = run(["groff", "-ww", "-z", "-man", page], timeout=60)
                self.assertEqual((r.returncode, r.stdout), (0, ""))
                r = subprocess.run(["man", "-l", page], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, timeout=60,
                                   env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8"))
                self.assertEqual((r.returncode, r.stderr), (0, ""))
                self.assertIn("NAME", r.stdout[:200])

    def test_shipped_config(self):
        """The installed backupmx.conf: production paths, no domain, valid
        (apart from the user, which only the package creates)."""
        conf = os.path.join(self.dest, "etc/backupmx/backupmx.conf")
        with open(conf) as f:
            text = f.read()
        for want in ('spool  = "/var/spool/backupmx"', 'user   = "backupmx"',
                     'listen = { "0.0.0.0:25", "[::]:25" }'):
            self.assertIn(want, text)
        r = run([os.path.join(self.dest, "usr/sbin/backupmx"), "-n", "-f", conf], timeout=30)
        try:
            pwd.getpwnam("backupmx")
            self.assertEqual((r.returncode, r.stdout), (0, ""))
        except KeyError:
            self.assertEqual(r.stdout.strip(),
                             "%s:%d: user: no such user 'backupmx'"
                             % (conf, text[:text.index('user   =')].count("\n") + 1))
        fixed = os.path.join(self.tmp, "nobody.conf")
        with open(fixed, "w") as f:
            f.write(text.replace('user   = "backupmx"', 'user   = "nobody"'))
        r = run([os.path.join(self.dest, "usr/sbin/backupmx"), "-n", "-f", fixed], timeout=30)
        self.assertEqual((r.returncode, r.stdout), (0, ""))

    def test_units_verify(self):
        """Installed with every path inside a temporary tree, so that
        systemd-analyze finds the programs and man pages they name."""
        top = os.path.join(self.tmp, "units")
        units = os.path.join(top, "lib/systemd/system")
        r = run(["make", "--no-print-directory", "install", "PREFIX=" + top + "/usr",
                 "SYSCONFDIR=" + top + "/etc", "SYSTEMDUNITDIR=" + units,
                 "INITDDIR=" + top + "/etc/init.d"])
        self.assertEqual(r.returncode, 0, r.stdout)
        files = sorted(glob.glob(os.path.join(units, "*")))
        names = sorted(os.path.basename(f) for f in files)
        want = ["backupmx.service"]
        if self.has_fetchd():
            want += ["fetchd.service", "fetchd.timer", "fetchd@.service"]
        self.assertEqual(names, sorted(want))
        r = run(["systemd-analyze", "verify"] + files, timeout=120,
                env={"MANPATH": os.path.join(top, "usr/share/man")})
        self.assertEqual((r.returncode, r.stdout), (0, ""))
        with open(os.path.join(units, "backupmx.service")) as f:
            unit = f.read()
        self.assertIn("ExecStart=%s/usr/sbin/backupmx -d -f %s/etc/backupmx/backupmx.conf"
                      % (top, top), unit)
        r = run(["sh", "-n", os.path.join(top, "etc/init.d/backupmx")])
        self.assertEqual((r.returncode, r.stdout), (0, ""))

    def test_service_settings(self):
        """What the operator's guide promises about the unit."""
        with open(os.path.join(ROOT, "init/backupmx.service")) as f:
            unit = f.read()
        for line in ("Type=simple",
                     "ExecStartPre=/usr/sbin/backupmx -n -f /etc/backupmx/backupmx.conf",
                     "ExecStart=/usr/sbin/backupmx -d -f /etc/backupmx/backupmx.conf",
                     "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                     "ReadWritePaths=/var/spool/backupmx", "PrivateTmp=yes",
                     "ProtectHome=yes"):
            self.assertIn("\n" + line + "\n", unit)
        caps = re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.M).group(1).split()
        self.assertEqual(sorted(caps), sorted(["CAP_NET_BIND_SERVICE", "CAP_SETUID",
                                               "CAP_SETGID", "CAP_CHOWN",
                                               "CAP_DAC_READ_SEARCH"]))
        with open(os.path.join(ROOT, "init/fetchd.timer")) as f:
            self.assertIn("OnUnitActiveSec=5min", f.read())
        with open(os.path.join(ROOT, "init/fetchd.cron")) as f:
            cron = [l for l in f if l.strip() and not l.startswith(("#", "SHELL", "PATH"))]
        self.assertEqual(len(cron), 1)
        self.assertTrue(cron[0].startswith("*/5 "), cron)
        self.assertIn("fetchd -1", cron[0])


# --- the Debian package ---------------------------------------------------

PKG = "backupmx"


def package_state(pkg=PKG):
    r = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", pkg],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return r.stdout.strip() if r.returncode == 0 else "not-installed"


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def package_test_blocker():
    if not (IS_CI or os.geteuid() == 0):
        return "needs CI=true or root"
    if os.geteuid() != 0:
        return "CI=true but not root: dpkg -i needs root"
    for pkg in (PKG, "fetchd"):
        if package_state(pkg) not in ("not-installed", ""):
            return "%s is installed on this machine (%s): not touching it" % (
                pkg, package_state(pkg))
    if user_exists(PKG) or group_exists(PKG):
        return "a user or group backupmx exists already: not touching it"
    if os.path.exists("/var/spool/backupmx") or os.path.exists("/etc/backupmx"):
        return "/var/spool/backupmx or /etc/backupmx exists already: not touching it"
    return None                  # missing tools fail the test, they do not skip it


_purge_needed = False
_FETCHD_USER_BEFORE = user_exists("fetchd")


def _purge():
    """Leaves the machine as it was: the package purged, its user gone."""
    global _purge_needed
    if not _purge_needed:
        return
    for pkg in (PKG, "fetchd"):
        if package_state(pkg) != "not-installed":
            subprocess.run(["dpkg", "--purge", pkg], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=300)
    if user_exists(PKG):
        subprocess.run(["userdel", PKG], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    if group_exists(PKG):
        subprocess.run(["groupdel", PKG], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    if not _FETCHD_USER_BEFORE and user_exists("fetchd"):
        subprocess.run(["userdel", "fetchd"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree("/var/lib/fetchd", ignore_errors=True)
    if not _FETCHD_USER_BEFORE and group_exists("fetchd"):
        subprocess.run(["groupdel", "fetchd"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    shutil.rmtree("/var/spool/backupmx", ignore_errors=True)
    _purge_needed = False


atexit.register(_purge)

_BLOCKER = package_test_blocker() if normal_variant() else "normal build only"


@unittest.skipIf(_BLOCKER is not None, _BLOCKER or "")
class Package(unittest.TestCase):
    TIMEOUT = 1800

    def setUp(self):
        version = makefile_version()
        arch = subprocess.run(["dpkg", "--print-architecture"], stdout=subprocess.PIPE,
                              text=True, check=True).stdout.strip()
        self.deb = os.path.join(ROOT, "%s_%s_%s.deb" % (PKG, version, arch))
        self.fetchd_deb = os.path.join(ROOT, "fetchd_%s_%s.deb" % (version, arch))
        self.debs_before = set(glob.glob(os.path.join(ROOT, "*.deb")))
        self.addCleanup(self.cleanup)

    def cleanup(self):
        _purge()
        for deb in set(glob.glob(os.path.join(ROOT, "*.deb"))) - self.debs_before:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(deb)

    def dpkg(self, *args):
        r = run(["dpkg"] + list(args), timeout=300,
                env={"DEBIAN_FRONTEND": "noninteractive"})
        self.assertEqual(r.returncode, 0, "dpkg %s:\n%s" % (" ".join(args), r.stdout))
        return r

    def test_deb_install_remove_purge(self):
        global _purge_needed
        t0 = time.monotonic()
        r = run(["make", "--no-print-directory", "deb"], timeout=1500)
        took = time.monotonic() - t0
        self.assertEqual(r.returncode, 0, "make deb:\n" + r.stdout[-4000:])
        self.assertTrue(os.path.exists(self.deb), r.stdout)
        print("# make deb took %.0fs" % took)

        # With fetchd split into its own package, both are built.
        debs, pkgs = [self.deb], [PKG]
        if os.path.exists(self.fetchd_deb):
            debs.append(self.fetchd_deb)
            pkgs.append("fetchd")

        r = run(["lintian", "--no-tag-display-limit"] + debs, timeout=600)
        errors = [l for l in r.stdout.splitlines() if l.startswith("E:")]
        self.assertEqual(errors, [], r.stdout)

        _purge_needed = True
        self.dpkg("-i", *debs)
        for pkg in pkgs:
            self.assertEqual(package_state(pkg), "installed", pkg)
        pw = pwd.getpwnam(PKG)
        self.assertLess(pw.pw_uid, 1000, "not a system user")
        self.assertEqual(grp.getgrgid(pw.pw_gid).gr_name, PKG)
        self.assertEqual(pw.pw_dir, "/var/spool/backupmx")
        self.assertIn(pw.pw_shell, ("/usr/sbin/nologin", "/bin/false"))
        st = os.stat("/var/spool/backupmx")
        self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)),
                         (pw.pw_uid, pw.pw_gid, 0o750))
        st = os.stat("/etc/backupmx/backupmx.conf")
        self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)),
                         (0, pw.pw_gid, 0o640))
        conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", PKG]).stdout
        for f in ("/etc/backupmx/backupmx.conf", "/etc/backupmx/backupmx.conf.example",
                  "/etc/init.d/backupmx"):
            self.assertIn(f + " ", conffiles)
        r = run(["/usr/sbin/backupmx", "-n", "-f", "/etc/backupmx/backupmx.conf"], timeout=30)
        self.assertEqual((r.returncode, r.stdout), (0, ""))
        r = run(["/usr/sbin/backupmx", "-V"], timeout=10)
        self.assertEqual(r.stdout.strip(), "backupmx %s" % makefile_version())
        self.assertTrue(os.path.exists("/lib/systemd/system/backupmx.service"))
        self.assertTrue(os.path.islink(
            "/etc/systemd/system/multi-user.target.wants/backupmx.service"),
            "backupmx.service is not enabled")
        fetchd = os.path.exists("/usr/bin/fetchd")
        if fetchd:
            r = run(["/usr/bin/fetchd", "-V"], timeout=10)
            self.assertEqual(r.stdout.split()[:2], ["fetchd", makefile_version()], r.stdout)
            for unit in ("timers.target.wants/fetchd.timer",
                         "multi-user.target.wants/fetchd.service"):
                self.assertFalse(os.path.lexists("/etc/systemd/system/" + unit),
                                 "%s is enabled: it needs a configuration first" % unit)
        if fetchd and not _FETCHD_USER_BEFORE:
            fw = pwd.getpwnam("fetchd")
            st = os.stat("/var/lib/fetchd")
            self.assertEqual((fw.pw_dir, st.st_uid, stat.S_IMODE(st.st_mode)),
                             ("/var/lib/fetchd", fw.pw_uid, 0o700))
        # Queued mail must survive `dpkg -r`: leave a file in the spool.
        marker = "/var/spool/backupmx/kept-by-remove"
        with open(marker, "w") as f:
            f.write("x\n")

        self.dpkg("-r", *pkgs)
        for pkg in pkgs:
            self.assertEqual(package_state(pkg), "config-files", pkg)
        self.assertFalse(os.path.exists("/usr/sbin/backupmx"))
        self.assertTrue(user_exists(PKG), "dpkg -r removed the user")
        self.assertTrue(os.path.exists(marker), "dpkg -r removed the spool")
        self.assertTrue(os.path.exists("/etc/backupmx/backupmx.conf"))

        if fetchd and not _FETCHD_USER_BEFORE:
            self.assertTrue(user_exists("fetchd"), "dpkg -r removed the user fetchd")
        self.dpkg("-P", *pkgs)
        for pkg in pkgs:
            self.assertEqual(package_state(pkg), "not-installed", pkg)
        self.assertFalse(os.path.exists("/var/spool/backupmx"), "purge kept the spool")
        self.assertFalse(user_exists(PKG), "purge kept the user")
        self.assertFalse(group_exists(PKG), "purge kept the group")
        self.assertFalse(os.path.exists("/etc/backupmx"), "purge kept /etc/backupmx")
        if fetchd and not _FETCHD_USER_BEFORE:
            self.assertFalse(user_exists("fetchd"), "purge kept the user fetchd")
            self.assertFalse(os.path.exists("/var/lib/fetchd"), "purge kept /var/lib/fetchd")
        self.assertFalse(os.path.lexists(
            "/etc/systemd/system/multi-user.target.wants/backupmx.service"))
        _purge_needed = False
