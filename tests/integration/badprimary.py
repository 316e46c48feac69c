"""A scriptable, misbehaving primary for tests/integration/test_bad_primary.py:
what stands on the other side of the backup's SMTP client when the primary
is broken, hostile or half dead.

BadPrimary(port)    an SMTP server on 127.0.0.1:PORT (one thread per
                    connection) that behaves like a plain primary until told
                    otherwise:

  plan(stage, *actions)   one-shot misbehaviours: the next time STAGE comes,
                          the first action is used (and dropped) instead of
                          the normal reply
  always(stage, action)   the same for every time STAGE comes (None: normal)
  split(chunk, delay)     every normal reply goes out CHUNK bytes at a time
  down() / up()           listener closed (connections refused) and every
                          open connection reset / listening again
  flap(period)            down and up every PERIOD seconds in a thread, until
                          steady() (which leaves it up)

  stages: "greeting", "ehlo", "starttls", "mail", "rcpt", "data" (the
  reply to DATA), "body" (while the message is coming in), "dot" (the
  reply to the end of the data), "rset", "quit".

  BadPrimary(port, tls=(cert, key)) offers STARTTLS (test certificates:
  the backup's tls = "may" takes any).

Action(data, chunk, delay, after, commit) sends DATA (bytes, or an iterable
of byte chunks) CHUNK bytes at a time with DELAY seconds in between, then
"continue"s the session, "close"s it (FIN), "rst"s it (RST) or "stall"s
(reads and ignores until the client gives up, or release()). At "dot",
COMMIT says whether the primary keeps the message (a real primary that
dies after storing it, or before). A normal 250 to the dot commits.

Every transaction that reached the end of its data is recorded (with
`committed`); delivered() lists the committed ones. Counted: connections,
resets done by down() (`kills`), resets of connections in the middle of a
transaction (`kills_in_txn`), and for each action whose sending the client
cut off, how much was sent (`cutoffs`).

Stopped by stop() (and at exit): the listener is closed and every
connection reset; all threads are daemon threads joined with a timeout.
"""

import atexit
import contextlib
import re
import socket
import struct
import threading
import time

_live = set()


@atexit.register
def _cleanup_all():
    for p in list(_live):
        with contextlib.suppress(Exception):
            p.stop()


STAGES = ("greeting", "ehlo", "starttls", "mail", "rcpt", "data", "body", "dot", "rset",
          "quit")


class Action:
    """A misbehaviour; see the module docstring."""

    def __init__(self, data=b"", chunk=None, delay=0.0, after="continue",
                 commit=False, name=None):
        if after not in ("continue", "close", "rst", "stall"):
            raise ValueError("after=%r" % after)
        self.data = data.encode() if isinstance(data, str) else data
        self.chunk = chunk
        self.delay = delay
        self.after = after
        self.commit = commit
        self.name = name

    def chunks(self):
        """The data as a sequence of byte strings."""
        if isinstance(self.data, (bytes, bytearray)):
            return [bytes(self.data)]
        return self.data

    def __repr__(self):
        if isinstance(self.data, (bytes, bytearray)):
            d = bytes(self.data[:40]) + (b"..." if len(self.data) > 40 else b"")
        else:
            d = "<stream>"
        return "Action(%s%r, after=%s)" % (self.name + ": " if self.name else "",
                                           d, self.after)


def endless(line, total):
    """TOTAL bytes made of LINE repeated, in 64 KB chunks (a reply the
    client should cut off long before the end)."""
    block = line * max(1, 65536 // len(line))
    sent = 0
    while sent < total:
        piece = block[:total - sent]
        sent += len(piece)
        yield piece


class Transaction:
    """A message that reached the end of its data at the primary."""

    def __init__(self, conn, sender):
        self.conn = conn
        self.sender = sender
        self.rcpts = []
        self.data = None
        self.committed = False
        self.tls = False

    def __repr__(self):
        return "Transaction(conn=%d, from=<%s>, to=%r, %s bytes, committed=%s%s)" % (
            self.conn, self.sender, self.rcpts,
            None if self.data is None else len(self.data), self.committed,
            ", tls" if self.tls else "")


class _Closed(Exception):
    """The session ends here (the client left or an action ended it)."""


class BadPrimary:
    def __init__(self, port, host="127.0.0.1", hostname="bad.test",
                 ehlo_lines=("PIPELINING", "8BITMIME", "SMTPUTF8",
                             "SIZE 104857600", "ENHANCEDSTATUSCODES"), tls=None):
        """TLS: (certfile, keyfile) to offer STARTTLS."""
        self.host, self.port = host, port
        self.hostname = hostname
        self.ehlo_lines = list(ehlo_lines)
        self.tls_ctx = None
        if tls is not None:
            import ssl
            self.tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls_ctx.load_cert_chain(*tls)
            self.ehlo_lines.append("STARTTLS")
        self.lock = threading.Lock()
        self.transactions = []
        self.commands = []
        self.connections = 0
        self.kills = 0
        self.kills_in_txn = 0
        self.cutoffs = []            # (stage, action name, bytes sent)
        self.used = []               # (conn, stage, action) actually served
        self.stalls = 0
        self.errors = []
        self._plans = {}
        self._sticky = {}
        self._split = (None, 0.0)
        self._conns = {}             # socket -> _Conn
        self._listener = None
        self._accept_thread = None
        self._accept_stop = None
        self._release_gen = 0
        self._flapper = None
        self._flap_stop = threading.Event()
        self._stopped = False
        _live.add(self)
        self.up()

    # --- scripting -----------------------------------------------------------
    def plan(self, stage, *actions):
        assert stage in STAGES, stage
        with self.lock:
            self._plans.setdefault(stage, []).extend(actions)

    def always(self, stage, action):
        assert stage in STAGES, stage
        with self.lock:
            if action is None:
                self._sticky.pop(stage, None)
            else:
                self._sticky[stage] = action

    def normal(self):
        """Forgets every plan, sticky action and split."""
        with self.lock:
            self._plans.clear()
            self._sticky.clear()
            self._split = (None, 0.0)
        self.release()

    def split(self, chunk, delay=0.0):
        with self.lock:
            self._split = (chunk, delay)

    def release(self):
        """Ends every stall under way (the stalled sessions are closed)."""
        with self.lock:
            self._release_gen += 1

    def pending(self, stage):
        with self.lock:
            return len(self._plans.get(stage, ()))

    def _action(self, conn_no, stage):
        with self.lock:
            q = self._plans.get(stage)
            a = q.pop(0) if q else self._sticky.get(stage)
            if a is not None:
                self.used.append((conn_no, stage, a))
            return a

    # --- results -------------------------------------------------------------
    def delivered(self):
        """[(recipient, Transaction)] of every committed transaction."""
        with self.lock:
            return [(r, t) for t in self.transactions if t.committed for r in t.rcpts]

    def committed(self):
        with self.lock:
            return [t for t in self.transactions if t.committed]

    def wait(self, pred, timeout, what="condition", interval=0.05):
        deadline = time.monotonic() + timeout
        while True:
            v = pred(self)
            if v:
                return v
            if time.monotonic() > deadline:
                with self.lock:
                    tail = self.transactions[-5:]
                    errs = self.errors[-3:]
                raise AssertionError("bad primary %s:%d: %s not reached within "
                                     "%ss (connections=%d, kills=%d, last "
                                     "transactions=%r, errors=%r)"
                                     % (self.host, self.port, what, timeout,
                                        self.connections, self.kills, tail, errs))
            time.sleep(interval)

    # --- listening, going down -------------------------------------------------
    def up(self):
        with self.lock:
            if self._listener is not None or self._stopped:
                return
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.host, self.port))
            s.listen(128)
            self._listener = s
            stop = threading.Event()
            self._accept_stop = stop
            t = threading.Thread(target=self._accept_loop, args=(s, stop), daemon=True)
            self._accept_thread = t
        t.start()

    def down(self, reset=True):
        """Closes the listener (new connections are refused once this
        returns) and, with RESET, resets every open connection."""
        with self.lock:
            s, t, stop = self._listener, self._accept_thread, self._accept_stop
            self._listener = self._accept_thread = self._accept_stop = None
        if s is not None:
            stop.set()
            # wakes the blocked accept() (EINVAL) without a polling loop
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            t.join(5)
            with contextlib.suppress(OSError):
                s.close()
        if not reset:
            return
        with self.lock:
            conns = list(self._conns.values())
        for c in conns:
            if c.reset():
                with self.lock:
                    self.kills += 1
                    self.kills_in_txn += c.in_txn

    def flap(self, period=1.0):
        """Down and up every PERIOD seconds until steady()."""
        if self._flapper is not None:
            return
        self._flap_stop.clear()

        def run():
            while not self._flap_stop.wait(period):
                self.down()
                if self._flap_stop.wait(period):
                    break
                self.up()
            self.up()
        self._flapper = threading.Thread(target=run, daemon=True)
        self._flapper.start()

    def steady(self):
        """Stops flapping; the primary is up afterwards."""
        t, self._flapper = self._flapper, None
        self._flap_stop.set()
        if t is not None:
            t.join(10)
        self.up()

    def stop(self):
        if self._stopped:
            return
        self._flap_stop.set()
        t, self._flapper = self._flapper, None
        if t is not None:
            t.join(10)
        self._stopped = True
        self.release()
        self.down()
        with self.lock:
            threads = [c.thread for c in self._conns.values()]
        for th in threads:
            th.join(5)
        _live.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()

    def _accept_loop(self, lsock, stop):
        while not stop.is_set():
            try:
                sock, _ = lsock.accept()
            except OSError:
                return
            with self.lock:
                if stop.is_set():
                    sock.close()
                    return
                self.connections += 1
                c = _Conn(self, sock, self.connections)
                self._conns[sock] = c
            c.thread.start()


class _Conn:
    """One session, in its own thread."""

    LINE_MAX = 1 << 20

    def __init__(self, srv, sock, no):
        self.srv = srv
        self.sock = sock
        self.no = no
        self.buf = b""
        self.in_txn = False
        self.dead = False
        self.tls = False
        # one write, one packet: "byte by byte" must reach the client so
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def reset(self, own_thread=False):
        """Drops the connection with a RST. From another thread (down())
        the socket is shut down to wake its thread, whose close() then
        resets it. False if it was already gone."""
        if self.dead:
            return False
        self.dead = True
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
        if own_thread:
            with contextlib.suppress(OSError):
                self.sock.close()
            return True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        return True

    def run(self):
        srv = self.srv
        try:
            self.sock.settimeout(60)
            self.session()
        except (_Closed, OSError):
            pass
        except Exception as e:          # a bug in the test server: report it
            with srv.lock:
                srv.errors.append("conn %d: %r" % (self.no, e))
        finally:
            self.dead = True
            with contextlib.suppress(OSError):
                self.sock.close()
            with srv.lock:
                srv._conns.pop(self.sock, None)

    # --- I/O ---------------------------------------------------------------
    def readline(self):
        while b"\n" not in self.buf:
            if len(self.buf) > self.LINE_MAX:
                raise _Closed()
            data = self.sock.recv(65536)
            if not data:
                raise _Closed()
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def send(self, data, chunk=None, delay=0.0):
        if self.dead:
            raise _Closed()
        if not chunk:
            self.sock.sendall(data)
            return
        for i in range(0, len(data), chunk):
            self.sock.sendall(data[i:i + chunk])
            if delay:
                time.sleep(delay)

    def reply(self, stage, text):
        """The normal reply TEXT (lines joined by \\r\\n), or the planned
        action for STAGE. Returns the action used (None: normal)."""
        a = self.srv._action(self.no, stage)
        if a is None:
            chunk, delay = self.srv._split
            self.send(text.encode("utf-8", "surrogateescape") + b"\r\n", chunk, delay)
            return None
        self.perform(stage, a)
        return a

    def perform(self, stage, a):
        sent = 0
        try:
            for piece in a.chunks():
                self.send(piece, a.chunk, a.delay)
                sent += len(piece)
        except OSError:
            with self.srv.lock:
                self.srv.cutoffs.append((stage, a.name, sent))
            raise _Closed()
        if a.after == "close":
            raise _Closed()
        if a.after == "rst":
            self.reset(own_thread=True)
            raise _Closed()
        if a.after == "stall":
            self.stall()

    def stall(self):
        """Says nothing more; reads and drops whatever comes until the
        client closes, release() or a minute."""
        with self.srv.lock:
            self.srv.stalls += 1
            gen = self.srv._release_gen
        deadline = time.monotonic() + 60
        self.sock.settimeout(0.1)
        while time.monotonic() < deadline and self.srv._release_gen == gen:
            try:
                if not self.sock.recv(65536):
                    break
            except socket.timeout:
                continue
        raise _Closed()

    # --- the session ---------------------------------------------------------
    def session(self):
        srv = self.srv
        self.reply("greeting", "220 %s ESMTP" % srv.hostname)
        tx = None
        while True:
            line = self.readline()
            text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            with srv.lock:
                srv.commands.append((self.no, text))
            verb = text.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                tx = None
                lines = [srv.hostname] + (srv.ehlo_lines if verb == "EHLO" else [])
                if self.tls:
                    lines = [l for l in lines if l != "STARTTLS"]
                self.reply("ehlo", "\r\n".join(
                    ["250-" + l for l in lines[:-1]] + ["250 " + lines[-1]]))
            elif verb == "STARTTLS" and srv.tls_ctx is not None and not self.tls:
                if self.reply("starttls", "220 2.0.0 Ready to start TLS") is None:
                    self.start_tls()
                tx = None
            elif verb == "MAIL":
                m = re.match(r"MAIL FROM:\s*<([^>]*)>", text, re.I)
                tx = Transaction(self.no, m.group(1) if m else "?")
                tx.tls = self.tls
                self.in_txn = True
                self.reply("mail", "250 2.1.0 Ok")
            elif verb == "RCPT":
                m = re.match(r"RCPT TO:\s*<([^>]*)>", text, re.I)
                if tx is None or not m:
                    self.reply("rcpt", "503 5.5.1 Bad sequence")
                    continue
                if self.reply("rcpt", "250 2.1.5 Ok") is None:
                    tx.rcpts.append(m.group(1))
            elif verb == "DATA":
                if tx is None or not tx.rcpts:
                    self.send(b"554 5.5.1 No valid recipients\r\n")
                    continue
                if self.reply("data", "354 End data with <CR><LF>.<CR><LF>") is not None:
                    continue
                self.read_body(tx)
                tx = None
                self.in_txn = False
            elif verb == "RSET":
                tx = None
                self.in_txn = False
                self.reply("rset", "250 2.0.0 Ok")
            elif verb == "NOOP":
                self.send(b"250 2.0.0 Ok\r\n")
            elif verb == "QUIT":
                self.reply("quit", "221 2.0.0 Bye")
                raise _Closed()
            else:
                self.send(b"502 5.5.2 Command not implemented\r\n")

    def start_tls(self):
        """Server side of STARTTLS; plaintext the client sent after the
        command is dropped (RFC 3207)."""
        self.buf = b""
        s = self.srv.tls_ctx.wrap_socket(self.sock, server_side=True)
        with self.srv.lock:
            c = self.srv._conns.pop(self.sock, None)
            self.srv._conns[s] = c or self
        self.sock = s
        self.tls = True

    def read_body(self, tx):
        srv = self.srv
        chunks = []
        first = True
        while True:
            line = self.readline()
            if first:
                first = False
                a = srv._action(self.no, "body")
                if a is not None:
                    self.perform("body", a)
            if line == b".\r\n":
                break
            if line.startswith(b"."):
                line = line[1:]
            chunks.append(line)
        tx.data = b"".join(chunks)
        a = srv._action(self.no, "dot")
        tx.committed = a is None or a.commit
        with srv.lock:
            srv.transactions.append(tx)
        if a is None:
            chunk, delay = srv._split
            self.send(b"250 2.0.0 Ok: queued\r\n", chunk, delay)
        else:
            self.perform("dot", a)
