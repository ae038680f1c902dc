#!/usr/bin/env bash
# Issue 13: one Gemma and one MoE model, `mlxsup run` vs mlx-lm 0.32.2 on the CPU backend,
# and the estimator's predicted total vs the measured MLX peak.
# - gemma2, bf16 (hidden 512, 8 layers, 8 heads / 4 KV of 64, MLP 2048, vocab 32000):
#   mlxsup --compute auto (f32 on the CPU) and --compute native (bf16) vs mlx-lm (bf16).
# - mixtral, f32 (hidden 512, 8 layers, 8 heads / 2 KV, 8 experts × MLP 1024, top 2,
#   vocab 32000): f32 because MLX 0.32.2's CPU GatherMM runs only in float32 (mlx-lm
#   fails on a bf16 MoE), so both run the same f32 folder.
# ~240 prompt tokens, 64 generated; each run one fresh process and one generation,
# interleaved (ours, mlx-lm, then mlx-lm, ours, …) ${RUNS:-3} rounds; medians.
# Prompt tps = prompt tokens / time to the first token; generation tps = tokens after the
# first / their time; peak = MLX's peak memory; predicted = the estimate at the context
# the run used (`done.estimate_used_bytes`), beside the plan at --context 1024.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
# shellcheck source=bench_env.sh
source scripts/bench_env.sh
runs=${RUNS:-3}
gen=${GEN:-64}
bin=target/release/mlxsup
log=$out/families-runs.jsonl
: >"$log"
gemma=$out/gemma2-40m-bf16
moe=$out/mixtral-8x-f32
[[ -f $gemma/config.json ]] || $bin make-model "$gemma" --arch gemma2 --hidden 512 --layers 8 --heads 8 \
  --kv-heads 4 --intermediate 2048 --vocab 32000 --seed 13 >&2
[[ -f $moe/config.json ]] || $bin make-model "$moe" --arch mixtral --hidden 512 --layers 8 --heads 8 \
  --kv-heads 2 --intermediate 1024 --vocab 32000 --experts 8 --experts-per-token 2 --dtype f32 --seed 13 >&2
prompt=$(printf 'the supervisor watches the worker and %.0s' {1..18})

ours() { # MODEL COMPUTE
  $bin run "$1" --json --compute "$2" --prompt "$prompt" --max-tokens "$gen" --context 1024 --budget "${BUDGET:-8GiB}" |
    $py -c '
import json, sys
ev = {}
for line in sys.stdin:
    e = json.loads(line)
    ev[e["event"]] = e
d, l, est = ev["done"], ev["loaded"], ev["estimate"]
print(json.dumps({"engine": "mlxsup " + sys.argv[2], "model": sys.argv[1], "prompt_tokens": d["prompt_tokens"],
  "generated_tokens": d["generated_tokens"], "prompt_tps": d["prompt_tps"], "generation_tps": d["generation_tps"],
  "peak_bytes": d["peak_bytes"], "predicted_bytes": d["estimate_used_bytes"], "planned_bytes": est["total_bytes"], "compute_dtype": l["compute_dtype"]}))' "$1" "$2"
}

for dir in "$gemma" "$moe"; do
  n=$($bin run "$dir" --json --prompt "$prompt" --max-tokens 1 --context 1024 --budget "${BUDGET:-8GiB}" |
    $py -c 'import json,sys; print([json.loads(l) for l in sys.stdin if "\"done\"" in l][0]["prompt_tokens"])')
  mlx_lm() {
    $py scripts/bench_mlx_lm.py "$dir" --prompt "$n" --gen "$gen" --runs 1 --no-warmup | tail -1 |
      $py -c 'import json,sys; r=json.load(sys.stdin); r["engine"]="mlx-lm"; print(json.dumps(r))' >>"$log"
  }
  policies=(auto)
  [[ $dir == "$gemma" ]] && policies=(auto native)
  for i in $(seq "$runs"); do
    if ((i % 2)); then
      for p in "${policies[@]}"; do ours "$dir" "$p" >>"$log"; done
      mlx_lm
    else
      mlx_lm
      for p in "${policies[@]}"; do ours "$dir" "$p" >>"$log"; done
    fi
  done
done

$py - "$log" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
mb = lambda b: f"{b / 2**20:.0f} MiB"
print("| model | mlxsup run | compute dtype | prompt tok/s (ours / mlx-lm) | × | gen tok/s (ours / mlx-lm) | × | MLX peak (ours / mlx-lm) | planned at 1024 | predicted at context used | predicted / peak |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for model in dict.fromkeys(r["model"] for r in rows):
    def med(engine, key):
        return statistics.median(r[key] for r in rows if r["model"] == model and r["engine"] == engine)
    ref = {k: med("mlx-lm", k) for k in ("prompt_tps", "generation_tps", "peak_bytes")}
    name = model.rsplit("/", 1)[-1]
    for policy in ("auto", "native"):
        e = "mlxsup " + policy
        if not any(r["engine"] == e and r["model"] == model for r in rows):
            continue
        o = {k: med(e, k) for k in ("prompt_tps", "generation_tps", "peak_bytes", "predicted_bytes", "planned_bytes", "prompt_tokens", "generated_tokens")}
        dtype = next(r["compute_dtype"] for r in rows if r["model"] == model and r["engine"] == e)
        print(f"| {name} ({o['prompt_tokens']:.0f} prompt, {o['generated_tokens']:.0f} gen) | --compute {policy} | {dtype} | "
              f"{o['prompt_tps']:.1f} / {ref['prompt_tps']:.1f} | {o['prompt_tps'] / ref['prompt_tps']:.2f}× | "
              f"{o['generation_tps']:.1f} / {ref['generation_tps']:.1f} | {o['generation_tps'] / ref['generation_tps']:.2f}× | "
              f"{mb(o['peak_bytes'])} / {mb(ref['peak_bytes'])} | {mb(o['planned_bytes'])} | {mb(o['predicted_bytes'])} | {o['predicted_bytes'] / o['peak_bytes']:.2f} |")
PY
