#!/usr/bin/env python3
"""Writes a small llama GGUF with llama.cpp's own gguf package (GGUFWriter): two layers
whose weights are random blocks of every type `mlxsup import` reads (Q4_0, Q4_1, Q5_0,
Q5_1, Q8_0, Q2_K..Q6_K, F16, BF16, F32), with sane f16 scales, and a byte-level BPE
vocabulary. For tests/real_model.rs, which imports it and compares every tensor with the
package's dequantization (tests/real_model.py compare).

usage: gguf_synth.py OUT.gguf [llama|llama3|qwen2|qwen3]
  (llama3 adds rope_freqs for Llama 3.1 scaling, qwen2 Q/K/V biases, qwen3 Q/K norms)
"""

import sys

import gguf
import numpy as np

T = gguf.GGMLQuantizationType
# Offsets of the f16 scale fields in each block type's layout.
HALVES = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
          T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 256, 512, 4, 2, 2
rng = np.random.default_rng(11)


def blocks(ty, rows, cols):
    block, size = gguf.GGML_QUANT_SIZES[ty]
    if ty in (T.F32, T.F16, T.BF16):
        x = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
        if ty == T.F32:
            return x
        if ty == T.F16:
            return x.astype(np.float16)
        return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, cols * 2)
    n = rows * cols // block
    b = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for off in HALVES[ty]:
        h = (rng.random(n) * 0.02 + 0.001).astype(np.float16)
        b[:, off:off + 2] = h.view(np.uint8).reshape(n, 2)
    return b.reshape(rows, cols // block * size)


def llama3_rope_factors(theta, dims, factor=8.0, low=1.0, high=4.0, old=8192.0):
    # As Hugging Face's _compute_llama3_parameters, which llama.cpp's convert stores.
    import math
    out = []
    for i in range(0, dims, 2):
        wavelen = 2 * math.pi * theta ** (i / dims)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def main(out, arch="llama"):
    w = gguf.GGUFWriter(out, "llama" if arch == "llama3" else arch)
    w.add_block_count(LAYERS)
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    theta = 500000.0 if arch == "llama3" else 10000.0
    w.add_rope_freq_base(theta)
    chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)] + [chr(c) for c in range(174, 256)]
    chars += [chr(256 + i) for i in range(256 - len(chars))]
    merges = [f"{a} {b}" for a, b in zip("thaeinos", "heanrtnf")]
    tokens = chars + [m.replace(" ", "") for m in merges] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    w.add_tokenizer_model("gpt2")
    # Each family's pre-tokenizer split: exercised by the parity test's prompt.
    w.add_tokenizer_pre({"llama3": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}.get(arch, "default"))
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([1] * (len(tokens) - 3) + [3, 3, 3])
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    vocab = len(tokens)
    w.add_tensor("token_embd.weight", blocks(T.F16, vocab, HIDDEN), raw_dtype=T.F16)
    w.add_tensor("output.weight", blocks(T.Q6_K, vocab, HIDDEN), raw_dtype=T.Q6_K)
    if arch == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(theta, HIDDEN // HEADS), raw_dtype=T.F32)
    w.add_tensor("output_norm.weight", blocks(T.F32, 1, HIDDEN)[0], raw_dtype=T.F32)
    kinds = [T.Q4_K, T.Q5_K, T.Q6_K, T.Q2_K, T.Q3_K, T.Q5_0, T.Q5_1,
             T.Q4_0, T.Q8_0, T.BF16, T.F16, T.Q4_1, T.Q4_K, T.Q6_K]
    hd = HIDDEN // HEADS
    for layer in range(LAYERS):
        shapes = [("attn_q", HIDDEN, HIDDEN), ("attn_k", KV_HEADS * hd, HIDDEN), ("attn_v", KV_HEADS * hd, HIDDEN),
                  ("attn_output", HIDDEN, HIDDEN), ("ffn_gate", FFN, HIDDEN), ("ffn_up", FFN, HIDDEN),
                  ("ffn_down", HIDDEN, FFN)]
        for i, (name, rows, cols) in enumerate(shapes):
            ty = kinds[(layer * len(shapes) + i) % len(kinds)]
            w.add_tensor(f"blk.{layer}.{name}.weight", blocks(ty, rows, cols), raw_dtype=ty)
        if arch == "qwen2":
            for name, rows in (("attn_q", HIDDEN), ("attn_k", KV_HEADS * hd), ("attn_v", KV_HEADS * hd)):
                w.add_tensor(f"blk.{layer}.{name}.bias", blocks(T.F32, 1, rows)[0], raw_dtype=T.F32)
        if arch == "qwen3":
            for name in ("attn_q_norm", "attn_k_norm"):
                w.add_tensor(f"blk.{layer}.{name}.weight", 1 + blocks(T.F32, 1, hd)[0], raw_dtype=T.F32)
        for name in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{layer}.{name}.weight", blocks(T.F32, 1, HIDDEN)[0], raw_dtype=T.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
