#!/usr/bin/env bash
# Generation speed of our worker engine vs mlx-lm, same model folder, same libmlx
# (0.32.2 CPU wheel), same prompt ids, interleaved run by run: ours, mlx-lm, ours, …
# Each invocation loads the model, warms up once, then measures one run. Prints a
# markdown table of medians and the per-run JSON into bench-out/generate-runs.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
# shellcheck source=bench_env.sh
source scripts/bench_env.sh
runs=${RUNS:-3}
cargo build -q --release -p mlxsup-worker --example bench_generate
ours=target/release/examples/bench_generate
: >"$out/generate-runs.jsonl"

# A ~303M-parameter qwen2 (hidden 1024, 24 layers, 16 heads / 4 KV, MLP 2816, vocab 32000).
shape=(--arch qwen2 --hidden 1024 --layers 24 --heads 16 --kv-heads 4 --intermediate 2816 --vocab 32000 --seed 1)
cases=(
  "bf16 128 64 $out/qwen2-300m-bf16"
  "4bit 16 8 $out/qwen2-300m-4bit"
)
echo "| model | prompt / gen tokens | ours prompt tok/s | mlx-lm prompt tok/s | ratio | ours gen tok/s | mlx-lm gen tok/s | ratio | ours peak | mlx-lm peak |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for case in "${cases[@]}"; do
  read -r name prompt gen dir <<<"$case"
  if [[ ! -f $dir/config.json ]]; then
    q=(); [[ $name == 4bit ]] && q=(--quant-bits 4 --group-size 64)
    target/release/mlxsup make-model "$dir" "${shape[@]}" "${q[@]}" >&2
  fi
  for i in $(seq "$runs"); do
    $ours "$dir" --prompt "$prompt" --gen "$gen" --runs 1 | tail -1 >>"$out/generate-runs.jsonl"
    $py scripts/bench_mlx_lm.py "$dir" --prompt "$prompt" --gen "$gen" --runs 1 | tail -1 >>"$out/generate-runs.jsonl"
  done
  $py - "$out/generate-runs.jsonl" "$dir" "$name" "$prompt" "$gen" <<'PY'
import json, statistics, sys
path, model, name, prompt, gen = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
rows = [r for r in rows if r.get("model") == model]
def med(engine, key):
    return statistics.median(r[key] for r in rows if r["engine"] == engine)
o = {k: med("mlxsup", k) for k in ("prompt_tps", "generation_tps", "peak_bytes")}
m = {k: med("mlx-lm", k) for k in ("prompt_tps", "generation_tps", "peak_bytes")}
mb = lambda b: f"{b / 2**20:.0f} MiB"
print(f"| qwen2 ~303M {name} | {prompt} / {gen} | {o['prompt_tps']:.2f} | {m['prompt_tps']:.2f} | "
      f"{o['prompt_tps'] / m['prompt_tps']:.2f}× | {o['generation_tps']:.2f} | {m['generation_tps']:.2f} | "
      f"{o['generation_tps'] / m['generation_tps']:.2f}× | {mb(o['peak_bytes'])} | {mb(m['peak_bytes'])} |")
PY
done
