# The README's commands. Each sets up what a fresh machine lacks first (scripts/setup.sh,
# idempotent: a second run does nothing and takes milliseconds).
SHELL := bash
CARGO ?= cargo
export MLX_BACKEND ?= cpu
# Every crate that does not link MLX: `make test` lints them for macOS too, so the
# macOS-only code (Metal limits, launchd, phys_footprint) always compiles.
MACOS_TARGET := aarch64-apple-darwin
NO_MLX_CRATES := -p mlxsup-protocol -p mlxsup-model -p mlxsup-estimate -p mlxsup-vision -p mlxsup-text -p mlxsup -p mlxsup-tests

.PHONY: setup build demo test lint bench soak clean

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release --bins

## The main job on a real model: SmolLM2-135M-Instruct's GGUF (cached by setup), imported,
## estimated, asked a question sandboxed, then a contained Metal-OOM crash.
demo: build
	target/release/mlxsup demo

## Everything CI checks: formatting, lints, and all tests (real worker processes, real MLX,
## the mlx-lm peer from .venv).
test: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy $(NO_MLX_CRATES) --all-targets --target $(MACOS_TARGET) -- -D warnings
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy $(NO_MLX_CRATES) --all-targets --target $(MACOS_TARGET) -- -D warnings

## Side-by-side numbers against mlx-lm on the same libmlx (writes bench-out/, see BENCHMARKS.md).
bench: build
	scripts/bench.sh

## Many HTTP clients while workers are killed, hung, unloaded and loaded under them; every
## answer checked against docs/CONTRACT.md (scripts/soak_http.py; SOAK_SECONDS=60 by default).
soak: build
	.venv/bin/python scripts/soak_http.py target/release/mlxsup --seconds $${SOAK_SECONDS:-60}

clean:
	$(CARGO) clean
	rm -rf .mlx .venv .setup-stamp bench-out
