#!/usr/bin/env python3
"""The same text model through mlx-lm on whichever MLX this interpreter has: 32 greedy
tokens and the first step's log-probabilities, as one JSON object. Run it under two
environments (e.g. .venv with MLX 0.32.2 and one with 0.32.4) and compare the outputs
with `mlx_gap.py compare A.json B.json` (BENCHMARKS.md section 11).

  mlx_gap.py run MODEL_DIR [PROMPT_IDS]   PROMPT_IDS: comma-separated token ids
  mlx_gap.py compare A.json B.json
"""

import json
import sys


def run(model_dir, ids):
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.models.cache import make_prompt_cache

    model, _ = mlx_lm.load(model_dir)
    cache = make_prompt_cache(model)
    logits = model(mx.array([ids]), cache=cache)[:, -1, :].astype(mx.float32)
    first = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    tokens = []
    y = mx.argmax(logits, axis=-1)
    for _ in range(32):
        tokens.append(int(y.item()))
        logits = model(y[None], cache=cache)[:, -1, :]
        y = mx.argmax(logits, axis=-1)
    print(json.dumps({"mlx": mx.__version__, "mlx_lm": mlx_lm.__version__,
                      "tokens": tokens, "first_logprobs": first[0].tolist()}))


def compare(a_path, b_path):
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    diffs = [abs(x - y) for x, y in zip(a["first_logprobs"], b["first_logprobs"])]
    same = next((i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])) if x != y), None)
    print(json.dumps({
        "a": a["mlx"], "b": b["mlx"],
        "first_logprobs_max_abs_diff": max(diffs),
        "first_logprobs_mean_abs_diff": sum(diffs) / len(diffs),
        "greedy_tokens_identical": a["tokens"] == b["tokens"],
        "first_divergence": same,
    }))


if __name__ == "__main__":
    if sys.argv[1] == "run":
        ids = [int(t) for t in (sys.argv[3] if len(sys.argv) > 3 else "1,17,42,99,7,300,512,8").split(",")]
        run(sys.argv[2], ids)
    elif sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
