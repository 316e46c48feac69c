"""bmxq over a queue of 100,000 messages (issue 4's acceptance): `bmxq list
| tail -1` and `bmxq stats` answer, and the daemon keeps accepting mail
while a list streams to a slow reader. The timings are printed as TAP
comments. Long (the fill alone takes a while): runs only with BMX_LONG=1;
test_bmxq.Scale5k runs the same test with 5,000 messages every time."""

import os
import unittest

from harness import DaemonTestCase
import test_bmxq


@unittest.skipUnless(os.environ.get("BMX_LONG") == "1",
                     "100,000 messages: set BMX_LONG=1")
class Scale100k(test_bmxq.ScaleBase, DaemonTestCase):
    N = 100000
    TIMEOUT = 1800

    @classmethod
    def setUpClass(cls):
        cls.DAEMON_ARGS = cls.scale_args()
        super().setUpClass()
