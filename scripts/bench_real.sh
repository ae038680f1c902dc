#!/usr/bin/env bash
# Generation speed on the real checkpoint (SmolLM2-135M-Instruct, imported from the Q4_1
# GGUF that scripts/setup.sh caches): our worker engine vs mlx-lm on the same folder,
# same libmlx, same prompt ids, eos ignored, interleaved run by run, as
# scripts/bench_generate.sh does for the synthetic qwen2. Three imports:
#   bf16   every tensor dequantized to bf16 (`mlxsup import --dense --dtype bf16`);
#   4-bit  the Q4_1/Q8_0 blocks carried over with f32 scales (the CPU default, exact);
#   4-bit f16  the same with f16 scales (the Metal default, exact), few tokens: MLX's CPU
#          backend runs f16 quantized matmuls ~40x slower.
# Prints a markdown table of medians; per-run JSON goes to bench-out/real-runs.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
# shellcheck source=bench_env.sh
source scripts/bench_env.sh
runs=${RUNS:-3}
if [[ $(uname -s) == Darwin ]]; then cache=$HOME/Library/Caches; else cache=${XDG_CACHE_HOME:-$HOME/.cache}; fi
gguf=$cache/mlxsup/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f $gguf ]] || { echo "bench_real: $gguf is missing: run scripts/setup.sh" >&2; exit 1; }
cargo build -q --release --bins
cargo build -q --release -p mlxsup-worker --example bench_generate
ours=target/release/examples/bench_generate
: >"$out/real-runs.jsonl"
cases=(
  "bf16 128 64 $runs $out/smollm2-bf16 --dense --dtype bf16"
  "4-bit_f32-scales 128 64 $runs $out/smollm2-q4-f32 --dtype f32"
  "4-bit_f16-scales 8 4 1 $out/smollm2-q4-f16 --dtype f16"
)
echo "| SmolLM2-135M | weights | prompt / gen tokens | ours prompt tok/s | mlx-lm prompt tok/s | ratio | ours gen tok/s | mlx-lm gen tok/s | ratio | ours peak | mlx-lm peak |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for case in "${cases[@]}"; do
  read -r name prompt gen n dir flags <<<"$case"
  if [[ ! -f $dir/config.json ]]; then
    # shellcheck disable=SC2086
    target/release/mlxsup import "$gguf" "$dir" $flags >&2
  fi
  for i in $(seq "$n"); do
    $ours "$dir" --prompt "$prompt" --gen "$gen" --runs 1 | tail -1 >>"$out/real-runs.jsonl"
    $py scripts/bench_mlx_lm.py "$dir" --prompt "$prompt" --gen "$gen" --runs 1 | tail -1 >>"$out/real-runs.jsonl"
  done
  weights=$(du -b "$dir"/*.safetensors | awk '{s+=$1} END {printf "%.0f MiB", s/1048576}')
  $py - "$out/real-runs.jsonl" "$dir" "${name//_/ }" "$prompt" "$gen" "$weights" <<'PY'
import json, statistics, sys
path, model, name, prompt, gen, weights = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
rows = [r for r in rows if r.get("model") == model]
def med(engine, key):
    return statistics.median(r[key] for r in rows if r["engine"] == engine)
o = {k: med("mlxsup", k) for k in ("prompt_tps", "generation_tps", "peak_bytes")}
m = {k: med("mlx-lm", k) for k in ("prompt_tps", "generation_tps", "peak_bytes")}
mb = lambda b: f"{b / 2**20:.0f} MiB"
print(f"| {name} | {weights} | {prompt} / {gen} | {o['prompt_tps']:.1f} | {m['prompt_tps']:.1f} | "
      f"{o['prompt_tps'] / m['prompt_tps']:.2f}× | {o['generation_tps']:.1f} | {m['generation_tps']:.1f} | "
      f"{o['generation_tps'] / m['generation_tps']:.2f}× | {mb(o['peak_bytes'])} | {mb(m['peak_bytes'])} |")
PY
done
