#!/usr/bin/env python3
"""Independent references for tests/real_model.rs: llama.cpp's own `gguf` package (its
reader and dequantizers) and mlx-lm. Each command prints one JSON object.

  sizes GGUF          tensor data bytes per the gguf package, its data offset, and its
                      table of ggml block sizes
  compare GGUF DIR    every tensor of DIR (an `mlxsup import` of GGUF) against the gguf
                      package's dequantization of the same tensor: exact equality of
                      scale*q+bias computed in f32 for quantized tensors, the largest
                      difference for dense ones; MLX's own mx.dequantize as a second view
  generate DIR JOBS   greedy mlx-lm generation for a JSON list of jobs
                      {"messages": [...], "max_tokens": n}, chat template applied,
                      stopping at the tokenizer's eos ids
"""

import json
import sys

import numpy as np


def sizes(path):
    import gguf

    r = gguf.GGUFReader(path)
    print(json.dumps({
        "tensor_bytes": int(sum(int(t.n_bytes) for t in r.tensors)),
        "tensors": len(r.tensors),
        "data_offset": int(r.data_offset),
        "quant_sizes": {str(int(k)): list(v) for k, v in gguf.GGML_QUANT_SIZES.items()},
        "quant_names": {str(int(k)): k.name for k in gguf.GGML_QUANT_SIZES},
    }))


def hf_name(name):
    base, suffix = name.rsplit(".", 1)
    top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
    if base in top:
        return f"{top[base]}.{suffix}"
    _, layer, part = base.split(".", 2)
    parts = {
        "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
        "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    }
    return f"model.layers.{layer}.{parts[part]}.{suffix}"


def unpermute(w, heads):
    # convert_hf_to_gguf.py stores reshape(heads, 2, d/2, ...).swapaxes(1, 2); invert it.
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def compare(path, folder):
    import glob

    import gguf
    import mlx.core as mx

    r = gguf.GGUFReader(path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    field = lambda k: int(r.fields[f"{arch}.{k}"].parts[-1][0])
    heads, kv_heads = field("attention.head_count"), field("attention.head_count_kv")
    ours = {}
    for f in sorted(glob.glob(f"{folder}/*.safetensors")):
        ours.update(mx.load(f))
    out = []
    for t in r.tensors:
        if t.name == "rope_freqs.weight":
            # Not a weight: MLX recomputes it from rope_scaling (checked by the caller).
            out.append({"name": t.name, "type": t.tensor_type.name, "kind": "dropped", "exact": True})
            continue
        ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        ref = ref.reshape([int(d) for d in reversed(t.shape)]) if ref.ndim != len(t.shape) else ref
        if arch in ("llama", "mistral") and ".attn_q." in t.name:
            ref = unpermute(ref, heads)
        if arch in ("llama", "mistral") and ".attn_k." in t.name:
            ref = unpermute(ref, kv_heads)
        name = hf_name(t.name)
        module = name.rsplit(".", 1)[0]
        row = {"name": t.name, "type": t.tensor_type.name}
        if name.endswith(".weight") and f"{module}.scales" in ours:
            w, s, b = ours[name], ours[f"{module}.scales"], ours[f"{module}.biases"]
            rows, cols = ref.shape
            bits = w.shape[1] * 32 // cols
            group = cols // s.shape[1]
            raw = np.array(w).view(np.uint8).reshape(rows, -1)
            # MLX's layout: each row one little-endian bit stream, code j at bits*j.
            stream = np.unpackbits(raw, axis=1, bitorder="little").reshape(rows, cols, bits)
            codes = (stream.astype(np.uint32) << np.arange(bits, dtype=np.uint32)).sum(axis=2)
            sf = np.repeat(np.array(s.astype(mx.float32)), group, axis=1)
            bf = np.repeat(np.array(b.astype(mx.float32)), group, axis=1)
            mine = sf * codes.astype(np.float32) + bf
            by_mlx = np.array(mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32),
                                            group_size=group, bits=bits))
            row.update(kind="quantized", bits=bits, group=group, scale_dtype=str(s.dtype),
                       exact=bool(np.array_equal(mine, ref)),
                       max_abs=float(np.max(np.abs(mine - ref))),
                       mlx_max_abs=float(np.max(np.abs(by_mlx - ref))),
                       ref_max=float(np.max(np.abs(ref))))
        else:
            mine = np.array(ours[name].astype(mx.float32))
            if ours[name].dtype == mx.float16:
                # Within f16 rounding: equal to the reference rounded to nearest f16.
                row["rounded_exact"] = bool(np.array_equal(mine, ref.astype(np.float16).astype(np.float32)))
            row.update(kind="dense", dtype=str(ours[name].dtype), exact=bool(np.array_equal(mine, ref)),
                       max_abs=float(np.max(np.abs(mine - ref))),
                       max_rel=float(np.max(np.abs(mine - ref) / np.maximum(np.abs(ref), 1e-30))))
        out.append(row)
    print(json.dumps({"tensors": out}))


def generate(folder, jobs_path):
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, tokenizer = load(folder)
    eos = set(tokenizer.eos_token_ids)
    results = []
    for job in json.load(open(jobs_path)):
        prompt = tokenizer.apply_chat_template(job["messages"], add_generation_prompt=True)
        if hasattr(prompt, "keys"):  # transformers 5 may return an encoding
            prompt = prompt["input_ids"]
        tokens = []
        for token, _ in generate_step(mx.array(prompt), model, max_tokens=job["max_tokens"]):
            if int(token) in eos:
                break
            tokens.append(int(token))
        results.append({"prompt_tokens": [int(t) for t in prompt], "tokens": tokens,
                        "text": tokenizer.decode(tokens)})
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"sizes": sizes, "compare": compare, "generate": generate}[cmd](*args)
