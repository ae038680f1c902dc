#!/usr/bin/env python3
"""Reference generations with mlx-lm, for worker/tests/reference_mlx_lm.rs.

Reads a JSON list of jobs on stdin; each job: {"model": dir, "prompt_text": str,
"prompt_tokens": [int], "max_tokens": int, "prefill_step": int, "chat": [messages]?, "f32": bool?,
"kv_bits": 4|8?}. With "kv_bits", generation quantizes the KV cache from the first step
(`kv_bits`, group size 64, `quantized_kv_start=0`). With "f32", the model is
converted to f32 in memory as `mlx_lm.convert --dequantize --dtype float32` would
(quantized layers dequantized, then every float parameter cast to float32).
Writes a JSON list of results: {"prompt_tokens": [...] (mlx-lm's tokenization of
prompt_text), "tokens": [...] (greedy, eos ignored), "first_logprobs": [...],
"chat_tokens": [...]?}. Generation is fed `prompt_tokens`, so the token comparison
does not depend on the tokenizers agreeing (that is checked separately).
"""

import json
import sys

import mlx.core as mx
from mlx_lm import load
from mlx_lm.utils import dequantize_model
from mlx_lm.generate import generate_step


def run(job):
    model, tokenizer = load(job["model"])
    if job.get("f32"):
        model = dequantize_model(model)
        model.set_dtype(mx.float32)
    out = {"prompt_tokens": tokenizer.encode(job["prompt_text"])}
    if job.get("chat"):
        chat = tokenizer.apply_chat_template(job["chat"], add_generation_prompt=True)
        if hasattr(chat, "keys"):  # transformers 5 may return an encoding
            chat = chat["input_ids"]
        out["chat_tokens"] = [int(t) for t in chat]
    tokens, first = [], None
    for token, logprobs in generate_step(
        mx.array(job["prompt_tokens"]),
        model,
        max_tokens=job["max_tokens"],
        prefill_step_size=job["prefill_step"],
        **(
            {"kv_bits": job["kv_bits"], "kv_group_size": 64, "quantized_kv_start": 0}
            if job.get("kv_bits")
            else {}
        ),
    ):
        if first is None:
            first = logprobs.astype(mx.float32).tolist()
        tokens.append(int(token))
    out["tokens"] = tokens
    out["first_logprobs"] = first
    return out


def main():
    jobs = json.load(sys.stdin)
    json.dump([run(job) for job in jobs], sys.stdout)


if __name__ == "__main__":
    main()
