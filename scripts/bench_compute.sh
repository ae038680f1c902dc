#!/usr/bin/env bash
# Issue 14: `mlxsup run` (--compute auto, then --compute native) vs mlx-lm on the CPU
# backend, on a SmolLM2-135M-shaped llama in bf16 and its 4-bit (group 64) conversion.
# bf16: ~128 prompt tokens, 64 generated; 4-bit: ~16 and 8 (native 4-bit is ~1 tok/s).
# Each run is one fresh process and one generation (mlx-lm without warm-up, as one
# `mlxsup run` is), interleaved auto, native, mlx-lm, then mlx-lm, native, auto, … ${RUNS:-3} rounds; medians.
# Prompt tps = prompt tokens / time to the first token; generation tps = tokens after
# the first / their time; peak = MLX's peak memory (the worker's, mlx-lm's).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
# shellcheck source=bench_env.sh
source scripts/bench_env.sh
runs=${RUNS:-3}
gen=${GEN:-64}
bin=target/release/mlxsup
log=$out/compute-runs.jsonl
: >"$log"
# SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads / 3 KV, MLP 1536, vocab 49152);
# random weights, untied head.
shape=(--arch llama --hidden 576 --layers 30 --heads 9 --kv-heads 3 --intermediate 1536 --vocab 49152 --seed 14)
bf16=$out/smollm2-135m-shape-bf16
q4=$out/smollm2-135m-shape-4bit
[[ -f $bf16/config.json ]] || $bin make-model "$bf16" "${shape[@]}" >&2
[[ -f $q4/config.json ]] || $bin make-model "$q4" "${shape[@]}" --quant-bits 4 --group-size 64 >&2
# Prompts of about 128 and 16 tokens (the count is read back from `done`): the CPU's
# native 4-bit kernels run at ~1 tok/s, so the 4-bit case is sized down (as in section 4).
long=$(printf 'the supervisor watches the worker and %.0s' {1..18})
short=$(printf 'the supervisor watches the worker and %.0s' {1..2})

ours() { # MODEL COMPUTE PROMPT GEN [LANES]
  # native1: --compute native with the matmul split off (one CPU stream: the engine before
  # the split, for the record of what the split gives).
  local policy=$2 lanes=${5:-0}
  [[ $policy == native1 ]] && policy=native lanes=1
  MLXSUP_MATMUL_LANES=$lanes $bin run "$1" --json --compute "$policy" --prompt "$3" --max-tokens "$4" --context 1024 --budget "${BUDGET:-8GiB}" |
    $py -c '
import json, sys
ev = {}
for line in sys.stdin:
    e = json.loads(line)
    ev[e["event"]] = e
d, l = ev["done"], ev["loaded"]
print(json.dumps({"engine": "mlxsup " + sys.argv[2], "model": sys.argv[1], "prompt_tokens": d["prompt_tokens"],
  "generated_tokens": d["generated_tokens"], "prompt_tps": d["prompt_tps"], "generation_tps": d["generation_tps"],
  "peak_bytes": d["peak_bytes"], "footprint_bytes": d["max_footprint_bytes"], "compute_dtype": l["compute_dtype"]}))' "$1" "$2"
}

for case in "bf16 $gen" "4bit ${GEN_4BIT:-8}"; do
  read -r name g <<<"$case"
  if [[ $name == bf16 ]]; then dir=$bf16 p=$long; else dir=$q4 p=$short; fi
  # The prompt's token count, for mlx-lm's ids.
  n=$($bin run "$dir" --json --prompt "$p" --max-tokens 1 --context 1024 --budget "${BUDGET:-8GiB}" |
    $py -c 'import json,sys; print([json.loads(l) for l in sys.stdin if "\"done\"" in l][0]["prompt_tokens"])')
  mlx_lm() {
    $py scripts/bench_mlx_lm.py "$dir" --prompt "$n" --gen "$g" --runs 1 --no-warmup | tail -1 |
      $py -c 'import json,sys; r=json.load(sys.stdin); r["engine"]="mlx-lm"; print(json.dumps(r))' >>"$log"
  }
  for i in $(seq "$runs"); do
    # The order alternates, so that a load change on the machine favours no one.
    if ((i % 2)); then
      ours "$dir" auto "$p" "$g" >>"$log"; ours "$dir" native "$p" "$g" >>"$log"
      ours "$dir" native1 "$p" "$g" >>"$log"; mlx_lm
    else
      mlx_lm; ours "$dir" native1 "$p" "$g" >>"$log"; ours "$dir" native "$p" "$g" >>"$log"
      ours "$dir" auto "$p" "$g" >>"$log"
    fi
  done
done

$py - "$log" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
mb = lambda b: f"{b / 2**20:.0f} MiB"
print("| model | mlxsup run | compute dtype | prompt tok/s (ours / mlx-lm) | × | gen tok/s (ours / mlx-lm) | × | MLX peak (ours / mlx-lm) |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for model in dict.fromkeys(r["model"] for r in rows):
    def med(engine, key):
        return statistics.median(r[key] for r in rows if r["model"] == model and r["engine"] == engine)
    ref = {k: med("mlx-lm", k) for k in ("prompt_tps", "generation_tps", "peak_bytes")}
    name = model.rsplit("/", 1)[-1]
    for policy in ("auto", "native", "native1"):
        e = "mlxsup " + policy
        label = "--compute native, 1 lane" if policy == "native1" else f"--compute {policy}"
        o = {k: med(e, k) for k in ("prompt_tps", "generation_tps", "peak_bytes", "prompt_tokens", "generated_tokens")}
        dtype = next(r["compute_dtype"] for r in rows if r["model"] == model and r["engine"] == e)
        print(f"| {name} ({o['prompt_tokens']:.0f} prompt, {o['generated_tokens']:.0f} gen) | {label} | {dtype} | "
              f"{o['prompt_tps']:.1f} / {ref['prompt_tps']:.1f} | {o['prompt_tps'] / ref['prompt_tps']:.2f}× | "
              f"{o['generation_tps']:.2f} / {ref['generation_tps']:.2f} | {o['generation_tps'] / ref['generation_tps']:.2f}× | "
              f"{mb(o['peak_bytes'])} / {mb(ref['peak_bytes'])} |")
PY
