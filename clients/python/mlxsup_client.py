"""A small client of the mlxsup daemon's control protocol (docs/PROTOCOL.md), standard
library only.

    from mlxsup_client import Client, Failed
    with Client() as c:                       # $MLXSUP_SOCKET, else the per-user default
        print(c.status()["budget_bytes"])
        gen = c.generate("Qwen2.5-0.5B-Instruct-bf16", "Hello", max_tokens=32)
        for text in gen.tokens():
            print(text, end="", flush=True)
        print(gen.done["done"]["generated_tokens"])

Frames are a 4-byte big-endian length and a body. The two hellos are postcard (the
only postcard this client writes or reads: a handful of varints and one string); every
frame after them is one JSON object, which needs control protocol 1.5 or newer.

A request that fails raises: ``Failed`` (the daemon's failure object, with its ``kind``),
``BadRequest`` (nothing was started), ``Cancelled``; a daemon that refuses the connection
or goes away raises ``ProtocolError``.
"""

import json
import os
import socket
import struct

#: The control protocol version this client speaks (JSON frames from 1.5).
VERSION = (1, 5)
#: The largest frame either side sends.
MAX_FRAME = 16 * 1024 * 1024
#: Role values of the hello (postcard enum index).
ROLE_CLIENT = 3
ROLES = ["supervisor", "worker", "daemon", "client"]


class ProtocolError(Exception):
    """The connection failed: refused, closed, a bad frame, an incompatible daemon."""


class RequestError(Exception):
    """A request the daemon answered with something other than success."""


class Failed(RequestError):
    """The request failed (admission refused, busy, quarantined, a worker's death...).

    ``failure`` is the daemon's failure object; ``kind`` its kind, e.g.
    ``insufficient_memory``, ``exited``, ``busy`` (docs/PROTOCOL.md lists them).
    """

    def __init__(self, failure):
        self.failure = failure
        self.kind = failure.get("kind")
        super().__init__(f"{self.kind}: {failure.get('advice') or failure.get('message')}")


class BadRequest(RequestError):
    """A bad request (an unknown model, say); nothing was started."""


class Cancelled(RequestError):
    """The request was cancelled."""


def default_socket():
    """``$MLXSUP_SOCKET``, else ``mlxsup.sock`` in the per-user runtime directory."""
    if os.environ.get("MLXSUP_SOCKET"):
        return os.environ["MLXSUP_SOCKET"]
    base = os.environ.get("MLXSUP_RUNTIME_DIR")
    if base:
        return os.path.join(base, "mlxsup.sock")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "mlxsup", "mlxsup.sock")
    tmp = os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(tmp, f"mlxsup-{os.getuid()}", "mlxsup.sock")


# --- postcard, for the hellos only ----------------------------------------------------


def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def varint(self):
        shift = n = 0
        while True:
            if self.pos >= len(self.data):
                raise ProtocolError("the daemon's hello is truncated")
            byte = self.data[self.pos]
            self.pos += 1
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return n
            shift += 7

    def string(self):
        n = self.varint()
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s.decode("utf-8", "replace")


def encode_hello(build, pid, version=VERSION):
    """``ToDaemon::Hello`` (variant 0) in postcard."""
    b = build.encode()
    return (_varint(0) + _varint(version[0]) + _varint(version[1]) + _varint(ROLE_CLIENT)
            + _varint(len(b)) + b + _varint(pid))


def decode_hello(body):
    """``FromDaemon::Hello`` from postcard: a dict with version, role, build, pid."""
    r = _Reader(body)
    if r.varint() != 0:
        raise ProtocolError("the daemon's first frame is not a hello")
    version = (r.varint(), r.varint())
    role = r.varint()
    return {"version": version, "role": ROLES[role] if role < len(ROLES) else role,
            "build": r.string(), "pid": r.varint()}


# --- the connection --------------------------------------------------------------------


class Client:
    """One connection to the daemon. Requests are served one at a time on it (a
    generation's events are read while iterating it); use several clients for
    concurrency."""

    def __init__(self, path=None, timeout=None, build="mlxsup_client.py"):
        self.path = path or default_socket()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError as e:
            self.sock.close()
            raise ProtocolError(f"no mlxsup daemon at {self.path}: {e}") from e
        self._next_id = 1
        self._write(encode_hello(build, os.getpid()))
        body = self._read()
        if body is None:
            raise ProtocolError("the daemon closed the connection during the handshake")
        self.daemon = decode_hello(body)
        major, minor = self.daemon["version"]
        if major != VERSION[0] or minor < VERSION[1]:
            self.close()
            raise ProtocolError(
                f"the daemon speaks control protocol {major}.{minor}; this client needs "
                f"{VERSION[0]}.{VERSION[1]} or a newer 1.x")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    # frames

    def _write(self, body):
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def _read_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None if not buf else bytes(buf)
            buf.extend(chunk)
        return bytes(buf)

    def _read(self):
        header = self._read_exact(4)
        if header is None:
            return None
        if len(header) < 4:
            raise ProtocolError("the connection closed in the middle of a frame")
        (n,) = struct.unpack(">I", header)
        if n > MAX_FRAME:
            raise ProtocolError(f"a frame of {n} bytes is over the maximum")
        body = self._read_exact(n) if n else b""
        if body is None or len(body) < n:
            raise ProtocolError("the connection closed in the middle of a frame")
        return body

    def send(self, body):
        """Sends a ``ControlRequest`` (its JSON value); returns the request id."""
        rid = self._next_id
        self._next_id += 1
        self._write(json.dumps({"Request": {"id": rid, "body": body}}).encode())
        return rid

    def cancel(self, rid):
        """Cancels request ``rid`` of this connection."""
        self._write(json.dumps({"Cancel": {"id": rid}}).encode())

    def next(self):
        """The next frame from the daemon: ``("event", id, event)`` or
        ``("reply", id, reply)``."""
        body = self._read()
        if body is None:
            raise ProtocolError("the daemon closed the connection")
        msg = json.loads(body)
        if "Event" in msg:
            return "event", msg["Event"]["id"], msg["Event"]["event"]
        if "Reply" in msg:
            return "reply", msg["Reply"]["id"], msg["Reply"]["body"]
        if "Refused" in msg:
            raise ProtocolError(f"the daemon refused the connection: {msg['Refused']['message']}")
        raise ProtocolError(f"unexpected message: {msg!r}")

    def call(self, body, on_event=None):
        """Sends a request and returns its reply's value, raising on a failure."""
        rid = self.send(body)
        while True:
            what, mid, value = self.next()
            if mid != rid:
                continue
            if what == "event":
                if on_event:
                    on_event(value)
                continue
            return reply_value(value)

    # requests

    def status(self):
        """The daemon itself (``DaemonStatus``)."""
        return self.call("Status")["Status"]

    def ps(self):
        """Every model the daemon holds or tried (``ModelStatus`` list)."""
        return self.call("Ps")["Ps"]

    def ls(self):
        """Every model the daemon can see (``ModelEntry`` list)."""
        return self.call("Ls")["Ls"]

    def load(self, model, context=None, keep_alive_ms=None, force=False, device="default",
             compute="auto", kv_bits=None):
        """Loads a model; returns its ``ModelStatus``."""
        body = {"Load": {
            "model": model, "context": context, "keep_alive": _keep_alive(keep_alive_ms),
            "force": force, "fault": None, "device": device, "compute": compute,
            "kv_bits": kv_bits}}
        return self.call(body)["Loaded"]

    def unload(self, model):
        """Unloads a model; returns its ``ModelStatus``."""
        return self.call({"Unload": {"model": model}})["Unloaded"]

    def generate(self, model, prompt, max_tokens=256, temperature=0.0, top_p=1.0, seed=None,
                 stop=(), context=None, keep_alive_ms=None, force=False, device="default",
                 compute="auto", kv_bits=None, fault=None):
        """Starts a generation; returns a :class:`Generation` to iterate.

        ``prompt``: a string, or a list of ``{"role": ..., "content": ...}`` chat messages,
        or a list of token ids. ``fault`` (tests only): e.g.
        ``{"action": {"Exit": 3}, "point": {"Decode": 2}}``.
        """
        if isinstance(prompt, str):
            p = {"Text": prompt}
        elif prompt and isinstance(prompt[0], int):
            p = {"Tokens": list(prompt)}
        else:
            p = {"Chat": [{"role": m["role"], "content": m["content"]} for m in prompt]}
        body = {"Generate": {
            "model": model,
            "request": {"prompt": p, "max_tokens": max_tokens,
                        "sampling": {"temperature": temperature, "top_p": top_p, "seed": seed},
                        "stop": list(stop), "fault": fault, "images": []},
            "context": context, "keep_alive": _keep_alive(keep_alive_ms), "force": force,
            "device": device, "compute": compute, "kv_bits": kv_bits}}
        return Generation(self, self.send(body))


class Generation:
    """A generation in flight. Iterating yields ``(kind, value)`` events: ``token`` (the
    text), ``telemetry``, ``phase``, ``progress``, ``vision`` (the worker's), and the
    daemon's ``estimate``, ``loaded``, ``note``; it ends after the reply, which is then in
    ``done`` (``GenerateDone``), or raises ``Failed``/``BadRequest``/``Cancelled``."""

    def __init__(self, client, rid):
        self.client, self.id, self.done = client, rid, None

    def cancel(self):
        """Asks the daemon to stop it at the next step (iteration then ends with the
        reply: ``Cancelled``, or a ``done`` whose finish is ``cancelled``)."""
        self.client.cancel(self.id)

    def __iter__(self):
        while self.done is None:
            what, rid, value = self.client.next()
            if rid != self.id:
                continue
            if what == "reply":
                self.done = reply_value(value)["Done"]
                return
            yield event_of(value)

    def tokens(self):
        """Only the generated text, piece by piece."""
        for kind, value in self:
            if kind == "token":
                yield value


def _keep_alive(ms):
    if ms is None:
        return None
    if ms == "forever":
        return "Forever"
    return {"Millis": int(ms)}


def reply_value(reply):
    """A ``ControlReply``'s JSON value, or the exception it stands for raised."""
    if reply == "Cancelled":
        raise Cancelled("the request was cancelled")
    if isinstance(reply, dict):
        if "Failed" in reply:
            raise Failed(reply["Failed"])
        if "BadRequest" in reply:
            raise BadRequest(reply["BadRequest"]["message"])
        return reply
    return {reply: None}


def event_of(event):
    """A ``ControlEvent`` as ``(kind, value)``."""
    if "Worker" in event:
        ((name, value),) = event["Worker"].items() if isinstance(event["Worker"], dict) \
            else ((event["Worker"], None),)
        if name == "Token":
            return "token", value["text"]
        return name.lower(), value
    ((name, value),) = event.items()
    return name.lower(), value
