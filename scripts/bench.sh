#!/usr/bin/env bash
# `make bench`: measurements side by side, in one run, on this machine. Writes
# bench-out/*.md; BENCHMARKS.md quotes them with the date and machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench_env.sh
source scripts/bench_env.sh
py=.venv/bin/python
bin=target/release
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sm), $(date -u +%F)" | tee "$out/machine.txt"

echo "== 1. f32 matmul 1024² in the same libmlx: worker (OpenBLAS linked) vs Python mlx (wheel BLAS) vs Python + OpenBLAS preloaded"
openblas=$(ls /usr/lib/*-linux-gnu/libopenblas.so.0 2>/dev/null | head -1 || true)
{
  echo "| runner | BLAS | median ms (5 cold processes) | GFLOP/s |"
  echo "|---|---|---:|---:|"
  w=(); p=(); q=()
  for i in 1 2 3 4 5; do  # interleaved
    w+=("$($bin/mlxsup info --json --matmul 1024 | $py -c 'import json,sys; print(json.load(sys.stdin)["matmul"]["ms"])')")
    p+=("$($py scripts/bench_matmul.py 1024 | $py -c 'import json,sys; print(json.load(sys.stdin)["ms"])')")
    if [[ -n $openblas ]]; then
      q+=("$(LD_PRELOAD=$openblas $py scripts/bench_matmul.py 1024 | $py -c 'import json,sys; print(json.load(sys.stdin)["ms"])')")
    fi
  done
  gf() { awk -v ms="$1" 'BEGIN {printf "%.1f", 2*1024^3/(ms*1e6)}'; }
  m=$(printf '%s\n' "${w[@]}" | median); echo "| mlxsup-worker | Debian OpenBLAS (linked ahead) | $m | $(gf "$m") |"
  m=$(printf '%s\n' "${p[@]}" | median); echo "| Python mlx 0.32.2 | wheel's reference BLAS | $m | $(gf "$m") |"
  if [[ -n $openblas ]]; then
    m=$(printf '%s\n' "${q[@]}" | median); echo "| Python mlx 0.32.2 | OpenBLAS via LD_PRELOAD | $m | $(gf "$m") |"
  fi
} | tee "$out/matmul.md"

echo "== 2. death → failure report latency"
model=$out/bench-tiny
[[ -f $model/config.json ]] || $bin/mlxsup make-model "$model" --arch qwen3 --hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 128 --vocab 512 >/dev/null
$py scripts/bench_failures.py "$bin/mlxsup" "$model" 10 | tee "$out/failures.md"

echo "== 3. estimator: inspect of a 160-shard model (headers only)"
cargo run -q --release -p mlxsup-estimate --example shard_bench | tee "$out/estimator.md"

if [[ -x scripts/bench_generate.sh ]]; then
  echo "== 4. generation vs mlx-lm"
  scripts/bench_generate.sh | tee "$out/generate.md"
fi
echo "== 5. the daemon: warm generate vs run vs mlx-lm, own memory, death → ps, evict + load"
cargo build -q --release -p mlxsup --example bench_daemon
mid=$out/qwen2-40m-bf16
[[ -f $mid/config.json ]] || $bin/mlxsup make-model "$mid" --arch qwen2 --hidden 512 --layers 8 --heads 8 --kv-heads 2 --intermediate 1408 --vocab 32000 --seed 3 >/dev/null
tiny_b=$out/bench-tiny-b
[[ -f $tiny_b/config.json ]] || $bin/mlxsup make-model "$tiny_b" --arch llama --hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 128 --vocab 512 >/dev/null
target/release/examples/bench_daemon "$bin/mlxsup" "$mid" "$model" "$tiny_b" "$py" "${ROUNDS:-5}" | tee "$out/daemon.md"

echo "== 6. HTTP: mlx_lm.server vs mlxsup serve --http, streamed chat, and out of memory"
$py scripts/bench_http.py "$bin/mlxsup" "$mid" "${ROUNDS:-5}" | tee "$out/http.md"

if [[ -x scripts/bench_real.sh ]]; then
  echo "== 7. the real checkpoint (SmolLM2-135M, imported from GGUF) vs mlx-lm"
  scripts/bench_real.sh | tee "$out/real.md"
fi
echo "== 8. the CPU compute dtype (issue 14): mlxsup run auto / native vs mlx-lm"
scripts/bench_compute.sh | tee "$out/compute.md"
echo "== 9. model families (issue 13): a Gemma 2 and a Mixtral vs mlx-lm, predicted vs measured peak"
scripts/bench_families.sh | tee "$out/families.md"
echo "== 10. Memory model accuracy (issue 12): predicted vs measured MLX peak, built-in and after calibrate"
scripts/bench_accuracy.sh | tee "$out/accuracy.md"
echo "== 11. vision-language models (issue 16): predicted vs measured peak with 0, 1 and 4 images"
$py scripts/bench_vision.py --out "$out" >/dev/null
cat "$out/vision.md"
echo "== 12. many clients and multi-turn chat (issue 22): mlx_lm.server vs mlxsup serve --http"
# The real SmolLM2 as bf16 (bench_real.sh's import; made here if that section was skipped).
if [[ $(uname -s) == Darwin ]]; then cache=$HOME/Library/Caches; else cache=${XDG_CACHE_HOME:-$HOME/.cache}; fi
smol=$out/smollm2-bf16
[[ -f $smol/config.json ]] || $bin/mlxsup import "$cache/mlxsup/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$smol" --dense --dtype bf16 >/dev/null
$py scripts/bench_concurrency.py "$bin/mlxsup" "$smol" --clients "${CLIENTS:-1,4,8,16}" --native | tee "$out/concurrency.md"
echo "results in $out/"
