#!/usr/bin/env python3
"""`make bench`: mlx_lm.server vs `mlxsup serve --http`, side by side in one run on the
same model folder, streamed chat through the same `openai` client: time to first token and
tokens/s (interleaved, median), then what each does when the request runs out of memory.

usage: bench_http.py MLXSUP MODEL_DIR [ROUNDS]
Prints markdown.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

from openai import OpenAI
import openai
from loopback import free_port, wait_http

mlxsup, model_dir = sys.argv[1], os.path.abspath(sys.argv[2])
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
py = sys.executable
PROMPT = "Write a long story about a lighthouse keeper and the sea. " * 4
GEN = 64


def stream_once(client, model, prompt=PROMPT, n=GEN, timeout=600, **extra):
    """(time to the first chunk with text, generation tokens/s, tokens). Tokens are the
    server's own count (usage), not chunks: servers hold back incomplete UTF-8 differently."""
    t0 = time.perf_counter()
    first, tokens = None, 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=n,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        timeout=timeout,
        **extra,
    )
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for ch in chunk.choices:
            if ch.delta.content and first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    tps = (tokens - 1) / (end - first) if first and tokens > 1 else 0.0
    return (first - t0) if first else float("nan"), tps, tokens


tmp = tempfile.mkdtemp(prefix="bh")
p_lm, p_us = free_port(), free_port()
lm = subprocess.Popen(
    [py, "-m", "mlx_lm", "server", "--model", model_dir, "--port", str(p_lm), "--log-level", "ERROR"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
env = dict(os.environ, MLXSUP_RUNTIME_DIR=os.path.join(tmp, "rt"), MLXSUP_LOG="warn")
us = subprocess.Popen(
    [mlxsup, "serve", "--http", f"127.0.0.1:{p_us}", "--allow-fault-injection"],
    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
try:
    wait_http(f"http://127.0.0.1:{p_lm}/v1/models", lm)
    wait_http(f"http://127.0.0.1:{p_us}/health", us)
    c_lm = OpenAI(base_url=f"http://127.0.0.1:{p_lm}/v1", api_key="x", max_retries=0)
    c_us = OpenAI(base_url=f"http://127.0.0.1:{p_us}/v1", api_key="x", max_retries=0)
    # Warm both (the daemon loads on first use; mlx_lm.server loaded at start).
    stream_once(c_lm, model_dir)
    stream_once(c_us, model_dir)
    res = {"mlx_lm.server": [], "mlxsup serve --http": []}
    for r in range(rounds):
        # A new prompt each round, the same for both: mlx_lm.server's prompt cache
        # would otherwise skip the prefill of a repeated prompt (mlxsup has none yet).
        prompt = f"Round {r} of {rounds}. {PROMPT}"
        res["mlx_lm.server"].append(stream_once(c_lm, model_dir, prompt=prompt))
        res["mlxsup serve --http"].append(stream_once(c_us, model_dir, prompt=prompt))
    print(f"#### Streamed chat through the `openai` client, same model, greedy, a new prompt each round ({GEN} tokens, median of {rounds}, interleaved)\n")
    print("| server | time to first token | generation tok/s | tokens |")
    print("|---|---:|---:|---:|")
    med = {}
    for name, rows in res.items():
        ttft = statistics.median(r[0] for r in rows) * 1e3
        tps = statistics.median(r[1] for r in rows)
        med[name] = (ttft, tps)
        print(f"| {name} | {ttft:.1f} ms | {tps:.2f} | {rows[-1][2]} |")
    a, b = med["mlxsup serve --http"], med["mlx_lm.server"]
    print(f"\nmlxsup/mlx_lm.server: tokens/s {a[1] / b[1]:.2f}×, first token {a[0] - b[0]:+.1f} ms.\n")
finally:
    lm.kill()
    lm.wait()

# Out of memory. mlx_lm.server under an address-space limit a long prompt passes; the
# daemon's worker running out of memory for real (an allocation it cannot hold, killed
# at its ceiling). Then one more request to each.
print("#### When a request runs out of memory\n")
print("| server | the request | the server afterwards | the next request |")
print("|---|---|---|---|")
def vm_size(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


# The limit: what the idle server maps, plus 256 MiB — room for small requests, not for
# a long prompt's prefill.
p_lm = free_port()
lm = subprocess.Popen(
    [py, "-m", "mlx_lm", "server", "--model", model_dir, "--port", str(p_lm), "--log-level", "ERROR"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
try:
    wait_http(f"http://127.0.0.1:{p_lm}/v1/models", lm)
    c_lm = OpenAI(base_url=f"http://127.0.0.1:{p_lm}/v1", api_key="x", max_retries=0)
    stream_once(c_lm, model_dir, n=4)
    limit = vm_size(lm.pid) + (256 << 20)
finally:
    lm.kill()
    lm.wait()
p_lm = free_port()
lm = subprocess.Popen(
    ["prlimit", f"--as={limit}", py, "-m", "mlx_lm", "server", "--model", model_dir,
     "--port", str(p_lm), "--log-level", "ERROR"],
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
)
try:
    wait_http(f"http://127.0.0.1:{p_lm}/v1/models", lm)
    c_lm = OpenAI(base_url=f"http://127.0.0.1:{p_lm}/v1", api_key="x", max_retries=0)
    stream_once(c_lm, model_dir, n=4)
    big = "lighthouse " * 3000
    t0 = time.time()
    try:
        _, _, n = stream_once(c_lm, model_dir, prompt=big, n=8, timeout=300)
        what = f"completed ({n} chunks)"
    except openai.APITimeoutError:
        what = "the stream hung (no answer in 300 s)"
    except Exception as e:
        what = f"{type(e).__name__} after {time.time() - t0:.1f} s"
    time.sleep(1)
    alive = lm.poll() is None
    after = "alive" if alive else f"dead (exit {lm.returncode})"
    nxt = "—"
    if alive:
        try:
            stream_once(c_lm, model_dir, n=4, timeout=60)
            nxt = "served"
        except Exception as e:
            nxt = f"failed: {type(e).__name__}"
    else:
        nxt = "connection refused (no server)"
    print(f"| mlx_lm.server (RLIMIT_AS {limit >> 20} MiB, a {len(big.split())}-word prompt) | {what} | {after} | {nxt} |")
finally:
    lm.kill()
    lm.wait()
us.kill()
us.wait()
# The daemon with a 2 GiB budget: its worker's ceiling; the request allocates 4 GiB.
p_us = free_port()
us = subprocess.Popen(
    [mlxsup, "serve", "--http", f"127.0.0.1:{p_us}", "--allow-fault-injection", "--budget", "2GiB"],
    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
try:
    wait_http(f"http://127.0.0.1:{p_us}/health", us)
    c_us = OpenAI(base_url=f"http://127.0.0.1:{p_us}/v1", api_key="x", max_retries=0)
    stream_once(c_us, model_dir, n=4)
    t0 = time.time()
    try:
        stream_once(
            c_us, model_dir, prompt="hi", n=8,
            extra_headers={"x-mlxsup-inject-fault": "alloc:4GiB@prefill"},
        )
        what = "completed"
    except openai.APIStatusError as e:
        what = f"HTTP {e.status_code} `{(e.body or {}).get('kind')}` in {time.time() - t0:.1f} s"
    except openai.APIError as e:
        what = f"SSE error `{(e.body or {}).get('kind')}` in {time.time() - t0:.1f} s"
    alive = us.poll() is None
    nxt = "served" if alive and stream_once(c_us, model_dir, n=4)[2] > 0 else "failed"
    print(f"| mlxsup serve --http (budget 2 GiB; the worker allocates 4 GiB of real MLX arrays in prefill) | {what} | {'alive' if alive else 'dead'} | {nxt} |")
finally:
    us.kill()
    us.wait()
