#!/usr/bin/env python3
"""Benchmark mlx-lm on one model folder, measured as worker/examples/bench_generate.rs
measures our engine: the same prompt ids, eos ignored, prompt tokens/s = prompt length /
time to the first token, generation tokens/s = generated tokens / time after the first
token, MLX peak memory reset before each run. One JSON object per run, then a summary
with the medians.

usage: bench_mlx_lm.py MODEL_DIR [--prompt 128] [--gen 128] [--runs 3] [--prefill-chunk 2048]
                       [--no-warmup]

--no-warmup measures the first generation of a fresh process, as one `mlxsup run` is.
"""

import argparse
import json
import statistics
import time

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step


def prompt_ids(n, vocab):
    span = max(vocab // 2, 1)
    return [(i * 7919 + 13) % span for i in range(n)]


def run_once(model, prompt, gen, chunk):
    start = time.perf_counter()
    first = None
    count = 0
    for _token, _ in generate_step(
        mx.array(prompt), model, max_tokens=gen, prefill_step_size=chunk
    ):
        if first is None:
            first = time.perf_counter()
        count += 1
    end = time.perf_counter()
    prompt_tps = len(prompt) / (first - start)
    generation_tps = count / (end - first) if end > first else 0.0
    return prompt_tps, generation_tps, count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prefill-chunk", type=int, default=2048)
    ap.add_argument("--no-warmup", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    model, _tokenizer = load(args.model)
    load_s = time.perf_counter() - t0
    vocab = model.args.vocab_size
    prompt = prompt_ids(args.prompt, vocab)
    if not args.no_warmup:
        run_once(model, prompt, args.gen, args.prefill_chunk)  # warm-up
    ps, gs, peaks = [], [], []
    for run in range(args.runs):
        mx.reset_peak_memory()
        p, g, count = run_once(model, prompt, args.gen, args.prefill_chunk)
        peak = mx.get_peak_memory()
        print(json.dumps({"engine": "mlx-lm", "run": run, "prompt_tokens": len(prompt),
                          "generated_tokens": count, "prompt_tps": p,
                          "generation_tps": g, "peak_bytes": peak}), flush=True)
        ps.append(p)
        gs.append(g)
        peaks.append(peak)
    print(json.dumps({"engine": "mlx-lm", "summary": True, "model": args.model,
                      "load_s": load_s, "prompt": args.prompt, "gen": args.gen,
                      "runs": args.runs, "prompt_tps": statistics.median_high(ps),
                      "generation_tps": statistics.median_high(gs),
                      "peak_bytes": statistics.median_high(peaks)}))


if __name__ == "__main__":
    main()
