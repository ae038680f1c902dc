#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test mlxsup, and nothing twice:
#   - Debian/Ubuntu packages: clang + libclang-dev (bindgen), libopenblas0-pthread (fast
#     BLAS for MLX's CPU backend), systemd (systemd-analyze, to verify the service unit in
#     the tests), python3-venv when python3 cannot make a venv;
#   - the pinned official MLX wheel into .mlx/ (what the worker links);
#   - .venv/ with mlx and mlx-lm at the same version (the peer for reference tests and
#     benchmarks).
# Environment: MLX_BACKEND=cpu|cuda (Linux; default cpu), PYTHON (default python3).
set -euo pipefail

MLX_VERSION=0.32.2
MLX_LM_VERSION=0.32.2
OPENAI_VERSION=3.57.0
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
# The peers: mlx-lm (reference tokens, benchmarks), and the `openai` client the HTTP
# front's tests drive.
venv_pkgs+=("mlx-lm==$MLX_LM_VERSION" "openai==$OPENAI_VERSION")

stamp=".setup-stamp"
want="$os $backend $wheel ${venv_pkgs[*]}"
if [[ -f $stamp && "$(cat "$stamp")" == "$want" && -d .mlx/mlx && -x .venv/bin/python ]]; then
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
if ! .venv/bin/python - "$MLX_VERSION" "$MLX_LM_VERSION" "$OPENAI_VERSION" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
assert version("mlx") == sys.argv[1] and version("mlx-lm") == sys.argv[2]
assert version("openai") == sys.argv[3]
PY
  say "installing ${venv_pkgs[*]} into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${venv_pkgs[@]}"
fi

echo "$want" >"$stamp"
say "ready: MLX $MLX_VERSION ($backend) in .mlx/, peer in .venv/"
