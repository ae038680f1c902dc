#!/usr/bin/env python3
"""`make soak`: many HTTP clients against `mlxsup serve --http` while its workers are killed,
hung, unloaded and loaded under them, checking the HTTP contract (docs/CONTRACT.md) on every
answer. Loopback only, bounded in time and in requests; stops by itself.

usage: soak_http.py MLXSUP [--seconds 60] [--clients 12] [--seed 1] [--max-requests 20000]

Every answer is recorded and checked:
  - a non-2xx answer has an OpenAI error body whose `type` is a documented failure kind (or
    one of the request errors), with the status docs/CONTRACT.md gives that kind;
  - a prompt longer than the context is a 400 `context_length_exceeded` before any stream,
    whether or not the model was loaded;
  - a stream that fails after it began ends with one `data: {"error": …}` event naming its
    kind, then the stream ends;
  - the daemon answers throughout, and serves a plain request once the chaos stops.
Prints a markdown table of outcomes per action and the violations; exit 1 if any.
"""

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from loopback import free_port

# The failure kinds and the HTTP status each one is answered with (docs/CONTRACT.md, HTTP).
# A worker's death before streaming began is a 500 with its kind.
STATUS_OF_KIND = {
    "insufficient_memory": {507},
    "context_length_exceeded": {400},
    "busy": {503},
    "quarantined": {503},
    "shutting_down": {503},
    "unloaded": {503},
}
WORKER_KINDS = {
    "metal_out_of_memory", "allocation_failed", "memory_budget_exceeded",
    "memory_ceiling_exceeded", "killed_by_os", "crashed", "unresponsive", "exited",
    "load_failed", "protocol_error",
}
REQUEST_ERRORS = {"invalid_request_error": {400}, "model_not_found": {404}}

CONTEXT = 256  # the soak model's max_position_embeddings
LONG_PROMPT = "word " * (CONTEXT * 2)


class Soak:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="mlxsup-soak-")
        self.models = os.path.join(self.tmp, "models")
        self.name = "soak-llama"
        self.port = free_port()
        self.socket = os.path.join(self.tmp, "run", "mlxsup.sock")
        self.env = dict(os.environ, MLXSUP_RUNTIME_DIR=os.path.join(self.tmp, "run"),
                        MLXSUP_SOCKET=self.socket, MLXSUP_CALIBRATION="off")
        self.lock = threading.Lock()
        self.outcomes = defaultdict(Counter)  # action -> outcome -> count
        self.violations = Counter()
        self.chaos = Counter()
        self.requests = 0
        self.stop = threading.Event()

    # --- the daemon -------------------------------------------------------------------
    def mlxsup(self, *argv, check=True):
        return subprocess.run([self.args.mlxsup, *argv], env=self.env, capture_output=True,
                              text=True, check=check, timeout=120)

    def start(self):
        os.makedirs(self.models)
        self.mlxsup("make-model", os.path.join(self.models, self.name), "--arch", "llama",
                    "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                    "--intermediate", "128", "--vocab", "512", "--max-position", str(CONTEXT))
        self.log = open(os.path.join(self.tmp, "daemon.log"), "w")
        self.daemon = subprocess.Popen(
            [self.args.mlxsup, "serve", "--models", self.models, "--keep-alive", "30s",
             "--http", f"127.0.0.1:{self.port}", "--queue", "16"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < 60:
            if self.daemon.poll() is not None:
                sys.exit(f"soak: the daemon exited with {self.daemon.returncode} (log: {self.log.name})")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit("soak: the daemon did not come up")

    def rss_kib(self):
        try:
            with open(f"/proc/{self.daemon.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None

    def worker_pid(self):
        ps = self.mlxsup("ps", "--json", check=False)
        try:
            for m in json.loads(ps.stdout).get("models", []):
                if m.get("name") == self.name and m.get("pid"):
                    return m["pid"]
        except (ValueError, AttributeError):
            pass
        return None

    # --- HTTP ---------------------------------------------------------------------------
    def conn(self, timeout=180):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path):
        c = self.conn(5)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def post(self, path, body, stream, disconnect_after_first=False):
        """(status, error object or None, streamed chunks, error event after streaming)."""
        c = self.conn()
        try:
            c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                raw = r.read()
                try:
                    err = json.loads(raw).get("error")
                except ValueError:
                    err = {"unparsable": raw[:200].decode("utf-8", "replace")}
                return r.status, err, 0, None
            if not stream:
                json.loads(r.read())
                return 200, None, 0, None
            chunks, late_error = 0, None
            while True:
                line = r.readline()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    late_error = obj["error"]
                    continue
                chunks += 1
                if disconnect_after_first:
                    break
            return 200, None, chunks, late_error
        finally:
            c.close()

    # --- the clients --------------------------------------------------------------------
    ACTIONS = [
        ("chat_stream", 5), ("chat", 3), ("completion", 2), ("disconnect_mid_stream", 1),
        ("over_context_stream", 1), ("over_context", 1), ("unknown_model", 1), ("bad_param", 1),
    ]

    def body(self, action, rng):
        msgs = [{"role": "user", "content": f"Tell me about the number {rng.randint(0, 999)}."}]
        base = {"model": self.name, "max_tokens": 8, "temperature": 0}
        if action in ("chat_stream", "disconnect_mid_stream"):
            return "/v1/chat/completions", dict(base, messages=msgs, stream=True), True
        if action == "chat":
            return "/v1/chat/completions", dict(base, messages=msgs), False
        if action == "completion":
            return "/v1/completions", dict(base, prompt="Once upon a time"), False
        if action == "over_context_stream":
            return "/v1/chat/completions", dict(base, messages=[{"role": "user", "content": LONG_PROMPT}], stream=True), True
        if action == "over_context":
            return "/v1/completions", dict(base, prompt=LONG_PROMPT), False
        if action == "unknown_model":
            return "/v1/chat/completions", dict(base, model="no-such-model", messages=msgs), False
        return "/v1/chat/completions", dict(base, messages=msgs, temperature=-1), False

    def violation(self, what):
        with self.lock:
            self.violations[what] += 1

    def check(self, action, status, err, chunks, late):
        kind = (err or {}).get("type") or (err or {}).get("kind")
        if status == 200:
            if late is not None:
                lk = late.get("type") or late.get("kind")
                if action.startswith("over_context"):
                    return self.violation(f"{action}: 200 and a stream, then an error event {lk!r} (the contract: 400 before the stream)")
                if lk not in STATUS_OF_KIND and lk not in WORKER_KINDS:
                    return self.violation(f"{action}: an SSE error event with an undocumented kind {lk!r}")
                return f"stream then {lk}"
            if action in ("over_context_stream", "over_context", "unknown_model", "bad_param"):
                return self.violation(f"{action}: answered 200")
            return "ok" if action != "disconnect_mid_stream" or chunks else "ok (no chunk)"
        if not kind:
            return self.violation(f"{action}: HTTP {status} without an error kind: {err}")
        if action.startswith("over_context") and (status, kind) != (400, "context_length_exceeded"):
            # A model that is quarantined, busy or going away may say so first.
            if kind not in ("busy", "quarantined", "unloaded", "shutting_down") and kind not in WORKER_KINDS:
                return self.violation(f"{action}: HTTP {status} {kind} (expected 400 context_length_exceeded)")
        expected = STATUS_OF_KIND.get(kind) or REQUEST_ERRORS.get(kind)
        if expected is None and kind in WORKER_KINDS:
            expected = {500}
        if expected is None:
            return self.violation(f"{action}: HTTP {status} with an undocumented kind {kind!r}")
        if status not in expected:
            return self.violation(f"{action}: {kind} answered HTTP {status}, the contract says {sorted(expected)}")
        return f"{status} {kind}"

    def client(self, seed):
        rng = random.Random(seed)
        actions, weights = zip(*self.ACTIONS)
        while not self.stop.is_set():
            with self.lock:
                if self.requests >= self.args.max_requests:
                    return
                self.requests += 1
            action = rng.choices(actions, weights)[0]
            path, body, stream = self.body(action, rng)
            try:
                got = self.post(path, body, stream, action == "disconnect_mid_stream")
                outcome = self.check(action, *got)
            except (OSError, http.client.HTTPException, ValueError) as e:
                outcome = None
                self.violation(f"{action}: {type(e).__name__}: {e}")
            with self.lock:
                self.outcomes[action][outcome or "VIOLATION"] += 1

    # --- the chaos ----------------------------------------------------------------------
    def chaos_loop(self, seed):
        rng = random.Random(seed)
        while not self.stop.wait(rng.uniform(1.5, 4.0)):
            what = rng.choice(["kill", "kill", "hang", "unload", "load"])
            if what in ("kill", "hang"):
                pid = self.worker_pid()
                if pid is None:
                    continue
                try:
                    os.kill(pid, signal.SIGKILL if what == "kill" else signal.SIGSTOP)
                except ProcessLookupError:
                    continue
            elif what == "unload":
                self.mlxsup("unload", self.name, check=False)
            else:
                self.mlxsup("load", self.name, check=False)
            self.chaos[what] += 1

    def run(self):
        self.start()
        rss0 = self.rss_kib()
        threads = [threading.Thread(target=self.client, args=(self.args.seed * 1000 + i,), daemon=True)
                   for i in range(self.args.clients)]
        threads.append(threading.Thread(target=self.chaos_loop, args=(self.args.seed,), daemon=True))
        t0 = time.time()
        for t in threads:
            t.start()
        while time.time() - t0 < self.args.seconds and any(t.is_alive() for t in threads[:-1]):
            if self.daemon.poll() is not None:
                self.violation(f"the daemon exited with {self.daemon.returncode}")
                break
            time.sleep(0.5)
        self.stop.set()
        for t in threads:
            t.join(timeout=240)
        rss1 = self.rss_kib()
        # Once the chaos stops, a plain request is served (after an unload, which also
        # clears a quarantine the kills may have earned the model).
        final = None
        if self.daemon.poll() is None:
            self.mlxsup("unload", self.name, check=False)
            for _ in range(3):
                try:
                    final = self.post("/v1/chat/completions", {"model": self.name, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}, False)
                except OSError as e:
                    final = (None, {"error": str(e)}, 0, None)
                if final[0] == 200:
                    break
                time.sleep(2)
            if not final or final[0] != 200:
                self.violation(f"after the chaos, a plain request was answered {final}")
        self.daemon.send_signal(signal.SIGTERM)
        try:
            self.daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.violation("the daemon did not stop within 30 s of SIGTERM")
            self.daemon.kill()
        self.report(time.time() - t0, rss0, rss1)

    def report(self, secs, rss0, rss1):
        print(f"soak: {self.requests} requests from {self.args.clients} clients in {secs:.0f} s; "
              f"chaos: {dict(self.chaos)}; daemon RSS {rss0} KiB at start, {rss1} KiB at the end")
        print()
        print("| action | outcomes |")
        print("|---|---|")
        for action, _ in self.ACTIONS:
            c = self.outcomes.get(action)
            if c:
                print(f"| {action} | " + ", ".join(f"{k}: {v}" for k, v in c.most_common()) + " |")
        print()
        if self.violations:
            print(f"**{sum(self.violations.values())} violations** (daemon log: {self.log.name}):")
            for v, n in self.violations.most_common(40):
                print(f"- {n} × {v}")
        else:
            print("no violations")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mlxsup")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-requests", type=int, default=20000)
    args = ap.parse_args()
    soak = Soak(args)
    soak.run()
    sys.exit(1 if soak.violations else 0)


if __name__ == "__main__":
    main()
