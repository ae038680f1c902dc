#!/usr/bin/env bash
# Issue 12's accuracy report: predicted vs measured MLX peak, with the built-in
# coefficients and after `mlxsup calibrate`, on llama, mistral (sliding window 4096,
# measured past it at 8192), qwen2, qwen3; bf16, f32, 4-bit, 8-bit checkpoints; contexts
# 128..8192; prefill chunks 512 and 2048; KV cache at the model dtype and 8-bit (bf16
# models, chunk 2048: measured and shown, not refit — the refit leaves quantized-KV runs
# out); and the real SmolLM2 checkpoint when setup has
# cached it. Each (model, dtype, compute, chunk) is one `mlxsup calibrate` ladder with its
# own empty store: "before" is the built-in model, "after" the refit of that ladder (what
# a user gets from `mlxsup calibrate MODEL`). Compared at the dtype the worker computed
# in (auto = f32 on this CPU; native keeps bf16 / quantized). Prints a Markdown table and
# the summary; the raw JSON goes to bench-out/accuracy.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench-out
mkdir -p "$out"
bin=${MLXSUP_BIN:-target/release}
py=.venv/bin/python
contexts=${CONTEXTS:-128,512,2048}
long=${LONG_CONTEXTS:-128,512,2048,8192}  # mistral: past its 4096-token window
work=$(mktemp -d /tmp/mlxsup-accuracy.XXXXXX)
trap 'rm -rf "$work"' EXIT
raw=$out/accuracy.jsonl
: > "$raw"

ladder() {  # label model compute chunk [contexts [extra flags...]]
  local label=$1 model=$2 compute=$3 chunk=$4 ctx=${5:-$contexts}
  shift $(( $# < 5 ? $# : 5 ))
  local store=$work/store-$RANDOM-$RANDOM.json
  MLXSUP_CALIBRATION=$store $bin/mlxsup calibrate "$model" --contexts "$ctx" \
    --prefill-chunk "$chunk" --compute "$compute" --budget 8GiB --json "$@" 2>"$work/err" \
    | $py -c 'import json,sys; d=json.load(sys.stdin); d["label"]=sys.argv[1]; d["compute"]=sys.argv[2]; print(json.dumps(d))' "$label" "$compute" >> "$raw" \
    || { echo "failed: $label $compute $chunk" >&2; tail -3 "$work/err" >&2; }
}

for arch in llama mistral qwen2 qwen3; do
  for dtype in bf16 f32 q4 q8; do
    dir=$work/$arch-$dtype
    case $dtype in
      q4) flags=(--dtype bf16 --quant-bits 4) ;;
      q8) flags=(--dtype bf16 --quant-bits 8) ;;
      *) flags=(--dtype "$dtype") ;;
    esac
    $bin/mlxsup make-model "$dir" --arch "$arch" --hidden 256 --layers 4 --heads 4 --kv-heads 2 \
      --intermediate 512 --vocab 1024 "${flags[@]}" >/dev/null
    # Small enough for ~10 minutes on 2 cores: both chunks on bf16, the f32-compute
    # policy (auto) on bf16 and 4-bit, one chunk elsewhere; mistral bf16 to 8192.
    ctx=$contexts; [[ $arch == mistral && $dtype == bf16 ]] && ctx=$long
    case $dtype in
      bf16) ladder "$arch $dtype" "$dir" native 512 "$ctx"; ladder "$arch $dtype" "$dir" native 2048 "$ctx"
            ladder "$arch $dtype" "$dir" f32 2048
            ladder "$arch $dtype kv8" "$dir" native 2048 "$ctx" --kv-bits 8 ;;
      f32) ladder "$arch $dtype" "$dir" native 512 ;;
      q4) ladder "$arch $dtype" "$dir" native 2048; ladder "$arch $dtype" "$dir" f32 512 ;;
      q8) ladder "$arch $dtype" "$dir" native 2048 ;;
    esac
  done
done
# The real checkpoint: SmolLM2-135M-Instruct's GGUF (cached by setup), imported dense
# to bf16 as bench_real.sh does.
if [[ $(uname -s) == Darwin ]]; then cache=$HOME/Library/Caches; else cache=${XDG_CACHE_HOME:-$HOME/.cache}; fi
gguf=${MLXSUP_CACHE_DIR:-$cache/mlxsup}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
smol=$out/smollm2-bf16
if [[ ${SKIP_REAL:-} != 1 && -f $gguf ]]; then
  [[ -f $smol/config.json ]] || $bin/mlxsup import "$gguf" "$smol" --dense --dtype bf16 >&2
  for chunk in 512 2048; do ladder "SmolLM2-135M bf16" "$smol" native "$chunk"; done
  ladder "SmolLM2-135M bf16" "$smol" f32 2048
else
  echo "note: the real SmolLM2 checkpoint is not cached ($gguf); run scripts/setup.sh" >&2
fi

$py - "$raw" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| model | compute | chunk | context | measured MiB | built-in MiB | err | after calibrate (refit) | err |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
before, after, kv = [], [], []
for r in rows:
    comp = "f32" if r["compute_f32"] else "native"
    quantized_kv = r.get("kv_bits") is not None
    for p in r["points"]:
        mib = lambda b: f"{b / 2**20:.1f}"
        refit = "not refit | —" if quantized_kv else f"{mib(p['predicted_refit'])} | {p['error_refit_pct']:+.1f}%"
        print(f"| {r['label']} | {comp} | {r['prefill_chunk']} | {p['context_used']} | {mib(p['peak_bytes'])} | "
              f"{mib(p['predicted_before'])} | {p['error_before_pct']:+.1f}% | {refit} |")
        before.append(p["error_before_pct"])
        (kv if quantized_kv else after).append(p["error_before_pct"] if quantized_kv else p["error_refit_pct"])
def summary(name, e):
    if not e: return
    print(f"\n{name}: {len(e)} points, median |error| {st.median(abs(x) for x in e):.2f}%, "
          f"worst under {min(e):+.2f}%, worst over {max(e):+.2f}%, under by more than 2%: {sum(1 for x in e if x < -2)}")
summary("built-in (all rows)", before)
summary("built-in, KV 8-bit rows only", kv)
summary("after calibrate (refit of each ladder, no floor)", after)
PY
