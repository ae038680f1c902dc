#!/usr/bin/env python3
"""`make bench`: many clients at once and multi-turn chat, `mlx_lm.server` vs
`mlxsup serve --http` side by side in one run, on the same model folder, through the same
`openai` client (streamed chat, greedy).

usage: bench_concurrency.py MLXSUP MODEL_DIR [--clients 1,4,8] [--tokens 32] [--turns 5]
                            [--native] [--serve-arg ARG]...

For each number of concurrent clients: aggregate generated tokens/s (all clients' tokens
over the wall time from the first request to the last answer) and time to first token
p50/p99, each client with its own prompt. Then a multi-turn chat whose conversation grows
to ~1,500 tokens: time to first token per turn (a chat client resends the whole
conversation every turn). `--native` adds ours with the model loaded `--compute native`.
`--serve-arg` passes an option to `mlxsup serve` (e.g. `--serve-arg=--prefix-cache=off`
for the numbers without the prefix cache).
Prints markdown. Loopback only; every request bounded by a timeout.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from openai import OpenAI
from loopback import free_port, wait_http

SYSTEM = ("You are a helpful assistant who answers questions about lighthouses, the sea, "
          "ships, weather and the history of navigation in plain words. ") * 6
TOPICS = ["storms", "fog horns", "lenses", "keepers", "tides", "maps", "stars", "engines",
          "sails", "compasses", "harbors", "reefs", "whales", "radio", "ice", "currents"]


def stream(client, model, messages, n, timeout=900):
    """(seconds to the first text, generated tokens by the server's own count, seconds)."""
    t0 = time.perf_counter()
    first, tokens, text = None, 0, []
    s = client.chat.completions.create(
        model=model, messages=messages, max_tokens=n, temperature=0, stream=True,
        stream_options={"include_usage": True}, timeout=timeout)
    for chunk in s:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for ch in chunk.choices:
            if ch.delta.content:
                text.append(ch.delta.content)
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    return ((first or end) - t0), tokens, end - t0, "".join(text)


def concurrent(client, model, clients, n, round_no):
    results = [None] * clients
    errors = []

    def one(i):
        msgs = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Round {round_no}: tell me about {TOPICS[i % len(TOPICS)]} ({i})."}]
        try:
            results[i] = stream(client, model, msgs, n)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = [r for r in results if r]
    tokens = sum(r[1] for r in done)
    ttft = sorted(r[0] for r in done)
    p99 = ttft[min(len(ttft) - 1, int(round(0.99 * (len(ttft) - 1))))] if ttft else float("nan")
    return {"tps": tokens / wall if wall else 0.0, "p50": statistics.median(ttft) if ttft else float("nan"),
            "p99": p99, "errors": errors, "tokens": tokens, "wall": wall}


def multi_turn(client, model, turns, n):
    msgs = [{"role": "system", "content": SYSTEM * 3}]
    out = []
    for t in range(turns):
        msgs.append({"role": "user", "content": f"Turn {t + 1}: and what about {TOPICS[t]}? "
                     + "Please answer at length, with history and examples. " * 4})
        ttft, _, _, text = stream(client, model, msgs, n)
        out.append(ttft)
        msgs.append({"role": "assistant", "content": text})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mlxsup")
    ap.add_argument("model")
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--native", action="store_true")
    ap.add_argument("--serve-arg", action="append", default=[])
    a = ap.parse_args()
    model = os.path.abspath(a.model)
    py = sys.executable
    tmp = tempfile.mkdtemp(prefix="bc")
    env = dict(os.environ, MLXSUP_RUNTIME_DIR=os.path.join(tmp, "rt"), MLXSUP_LOG="warn",
               MLXSUP_SOCKET=os.path.join(tmp, "rt", "s.sock"), MLXSUP_CALIBRATION="off")
    servers = {}
    p = free_port()
    servers["mlx_lm.server"] = (subprocess.Popen(
        [py, "-m", "mlx_lm", "server", "--model", model, "--port", str(p), "--log-level", "ERROR"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), p, "/v1/models")
    p = free_port()
    servers["mlxsup serve --http"] = (subprocess.Popen(
        [a.mlxsup, "serve", "--http", f"127.0.0.1:{p}", "--keep-alive", "-1", *a.serve_arg],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), p, "/health")
    try:
        clients = {}
        for name, (proc, port, health) in servers.items():
            wait_http(f"http://127.0.0.1:{port}{health}", proc, limit=180)
            clients[name] = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        if a.native:
            subprocess.run([a.mlxsup, "load", model, "--compute", "native"], env=env, check=True,
                           capture_output=True, timeout=600)
            clients["mlxsup --compute native"] = clients["mlxsup serve --http"]
        order = list(clients)
        levels = [int(x) for x in a.clients.split(",")]
        print(f"#### Concurrent streaming clients ({a.tokens} tokens each, greedy, a system prompt of "
              f"~{len(SYSTEM.split())} words and a distinct question per client)\n")
        print("| server | clients | aggregate tok/s | first token p50 | first token p99 | errors |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in order:
            if name == "mlxsup --compute native":
                continue
            stream(clients[name], model, [{"role": "user", "content": "warm up"}], 4)  # load
        results = {}
        for name in order:
            if name == "mlxsup --compute native":
                # The daemon keeps the f32 load; reload native for these rows.
                subprocess.run([a.mlxsup, "unload", model], env=env, capture_output=True, timeout=120)
                subprocess.run([a.mlxsup, "load", model, "--compute", "native"], env=env,
                               check=True, capture_output=True, timeout=600)
            for k in levels:
                r = concurrent(clients[name], model, k, a.tokens, k)
                results[(name, k)] = r
                print(f"| {name} | {k} | {r['tps']:.2f} | {r['p50']:.2f} s | {r['p99']:.2f} s | {len(r['errors'])} |",
                      flush=True)
        print()
        if a.native:
            subprocess.run([a.mlxsup, "unload", model], env=env, capture_output=True, timeout=120)
        print(f"#### Multi-turn chat ({a.turns} turns, {a.tokens} tokens a turn): time to first token per turn\n")
        print("| server | " + " | ".join(f"turn {t + 1}" for t in range(a.turns)) + " |")
        print("|---|" + "---:|" * a.turns)
        for name in ("mlx_lm.server", "mlxsup serve --http"):
            ttfts = multi_turn(clients[name], model, a.turns, a.tokens)
            print(f"| {name} | " + " | ".join(f"{x:.2f} s" for x in ttfts) + " |", flush=True)
    finally:
        for proc, _, _ in servers.values():
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
