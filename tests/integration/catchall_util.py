"""Catch-all test support: a daemon with a catch-all domain served over
POP3 and IMAP, a test CA, and Maildir inspection.

CatchallDaemon(pop3_tls=None|"none"|"starttls"|"implicit", imap_tls=...,
               quota=None, extra="", **Daemon kwargs)
    SMTP on .port, POP3 on .pop3_port, IMAP on .imap_port (None when the
    protocol is off); domain catch.test -> mailbox "catch" (login
    .mailbox_user / .mailbox_password) in .maildir (default
    SPOOL/catchall/catch, or the maildir= given). The server certificate
    is signed by a test CA (.ca_file) and valid for localhost, 127.0.0.1
    and mx2.example.test, so clients can verify it (sslcertck).
CatchallTestCase
    one CatchallDaemon per class (DAEMON_ARGS), health-checked after each
    test like harness.DaemonTestCase.
"""

import os
import subprocess

import harness
from harness import Daemon, free_ports, run_tool

CA_DOMAIN = "catch.test"
MAILBOX = "catch"
PASSWORD = "secret"


def make_ca_and_cert(directory):
    """A CA and a server certificate signed by it. Returns (ca, cert, key)."""
    ca_key = os.path.join(directory, "ca.key")
    ca = os.path.join(directory, "ca.pem")
    key = os.path.join(directory, "server.key")
    csr = os.path.join(directory, "server.csr")
    cert = os.path.join(directory, "server.pem")
    ext = os.path.join(directory, "server.ext")
    run_tool(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
              "-subj", "/CN=backupmx test CA", "-days", "2",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign",
              "-keyout", ca_key, "-out", ca], timeout=60)
    run_tool(["openssl", "req", "-newkey", "rsa:2048", "-nodes",
              "-subj", "/CN=localhost", "-keyout", key, "-out", csr], timeout=60)
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:mx2.example.test\n")
    run_tool(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
              "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", cert],
             timeout=60)
    for p in (ca, cert, key):
        os.chmod(p, 0o644)
    return ca, cert, key


def crypt_sha512(password):
    out = subprocess.run(["openssl", "passwd", "-6", password], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def make_maildir(path):
    """An empty Maildir (cur, new, tmp) at PATH, for a puller to deliver
    into; returns PATH."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    return path


class CatchallDaemon(Daemon):
    def __init__(self, pop3_tls="none", imap_tls="none", quota=None, extra="",
                 password=PASSWORD, maildir=None, **kw):
        self.mailbox_user = MAILBOX
        self.mailbox_password = password
        ports = free_ports(2)
        self.pop3_port = ports[0] if pop3_tls else None
        self.imap_port = ports[1] if imap_tls else None
        conf = []
        self._pending = (pop3_tls, imap_tls, quota, password)
        super().__init__(extra="@CATCHALL@\n" + extra, **kw)
        self.ca_file, self.cert, self.key = make_ca_and_cert(self.tmp)
        self.maildir = maildir or os.path.join(self.spool, "catchall", MAILBOX)
        if any(t not in (None, "none") for t in (pop3_tls, imap_tls)):
            conf.append('tls { cert = "%s"  key = "%s" }' % (self.cert, self.key))
        conf.append('domain "%s" { mode = "catchall"  mailbox = "%s" }'
                    % (CA_DOMAIN, MAILBOX))
        q = '  quota = %s' % quota if quota else ""
        if maildir:
            q += '  maildir = "%s"' % maildir
        conf.append('mailbox "%s" { password = "%s"%s }'
                    % (MAILBOX, crypt_sha512(password), q))
        if pop3_tls:
            conf.append('pop3 { listen = { "127.0.0.1:%d" }  tls = "%s" }'
                        % (self.pop3_port, pop3_tls))
        if imap_tls:
            conf.append('imap { listen = { "127.0.0.1:%d" }  tls = "%s" }'
                        % (self.imap_port, imap_tls))
        with open(self.conf) as f:
            text = f.read()
        self.write_file("backupmx.conf", text.replace("@CATCHALL@", "\n".join(conf)))

    def deliver(self, rcpts, sender="s@example.net", body=None):
        """One message over SMTP to RCPTS (all must be accepted); returns
        the queue id."""
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        with self.connect() as c:
            c.ehlo()
            qid = c.send_mail(sender=sender, rcpts=rcpts, msg=body)
            c.quit()
        return qid

    def maildir_files(self, sub=("new", "cur")):
        """Sorted (subdir, name) of the messages in the Maildir."""
        out = []
        for d in sub:
            p = os.path.join(self.maildir, d)
            if os.path.isdir(p):
                out.extend((d, n) for n in os.listdir(p) if not n.startswith("."))
        return sorted(out)

    def read_message(self, sub, name):
        with open(os.path.join(self.maildir, sub, name), "rb") as f:
            return f.read()


class CatchallTestCase(harness.DaemonTestCase):
    DAEMON_ARGS = {}

    @classmethod
    def setUpClass(cls):
        cls.daemon = CatchallDaemon(**cls.DAEMON_ARGS)
        cls.addClassCleanup(cls.daemon.cleanup)
        cls.daemon.start()
