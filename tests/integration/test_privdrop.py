"""Privilege drop: started as root with user = "nobody", the daemon runs as
nobody (all of real/effective/saved/fs uid and gid, no supplementary root
group) and still accepts and queues mail, also after a restart."""

import pwd
import unittest

import harness
from harness import Daemon, DaemonTestCase


@unittest.skipUnless(harness.is_root(), "not root")
class PrivDrop(DaemonTestCase):

    @classmethod
    def setUpClass(cls):
        cls.pw = pwd.getpwnam("nobody")
        cls.daemon = Daemon(user="nobody")   # temp dir 0755, spool owned by nobody
        cls.addClassCleanup(cls.daemon.cleanup)
        cls.daemon.start()

    def ids(self):
        st = {}
        with open("/proc/%d/status" % self.daemon.pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                st[k] = v.split()
        return st

    def test_runs_as_nobody(self):
        st = self.ids()
        self.assertEqual([int(x) for x in st["Uid"]], [self.pw.pw_uid] * 4, st["Uid"])
        self.assertEqual([int(x) for x in st["Gid"]], [self.pw.pw_gid] * 4, st["Gid"])
        self.assertNotIn("0", st.get("Groups", []), "still in group 0")

    def test_accepts_mail_and_restarts(self):
        before = self.queue_count()        # qtool runs as nobody too
        c = self.session()
        qid = c.send_mail()
        c.quit()
        # restart: the spool it wrote as nobody must open again
        self.daemon.restart()
        st = self.ids()
        self.assertEqual(int(st["Uid"][0]), self.pw.pw_uid)
        c = self.session()
        qid2 = c.send_mail()
        c.quit()
        self.assertEqual(self.queue_count(), (before[0] + 2, before[1] + 2))
        bodies = self.queue_bodies([qid, qid2])
        self.assertTrue(bodies[qid].startswith(b"Received:"))
        self.assertTrue(bodies[qid2].startswith(b"Received:"))
