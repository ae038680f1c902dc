#!/usr/bin/env python3
"""A SentencePiece BPE vocabulary in a GGUF, against sentencepiece itself, for
tests/real_model.rs. Llama-style settings (identity normalization, no whitespace
collapsing, a dummy prefix, byte fallback, split digits).

  make DIR            trains DIR/m.model on a small corpus and writes DIR/spm.gguf (a tiny
                      llama with that vocabulary, tokenizer.ggml.model = llama)
  compare DIR FOLDER  encodes sample texts with sentencepiece (DIR/m.model) and with
                      FOLDER/tokenizer.json (the tokenizers library mlx-lm and the worker
                      use); prints {"cases": [{"text", "sentencepiece", "ours", "decoded"}]}
"""

import json
import os
import sys

SAMPLES = [
    "The quick brown fox",
    "Hello world!  Two  spaces",
    "naïve café 😀 日本",
    "It was 12345, wasn't it?\nNew line",
    " leading space",
    "zzzqqq xylophone",
    "\t tab and trailing ",
]


def make(d):
    import gguf
    import numpy as np
    import sentencepiece as spm

    text = ("The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.\n"
            "In 2024, 12345 people said: \"don't stop!\" Über naïve café. The heat wasn't 40°C; it was hotter.\n"
            "Call me Ishmael. Some years ago, having little or no money in my purse, I thought I would sail.\n") * 20
    with open(os.path.join(d, "corpus.txt"), "w") as f:
        f.write(text)
    spm.SentencePieceTrainer.train(
        input=os.path.join(d, "corpus.txt"), model_prefix=os.path.join(d, "m"), vocab_size=400,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "m.model"))
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1)
    w = gguf.GGUFWriter(os.path.join(d, "spm.gguf"), "llama")
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    rng = np.random.default_rng(0)
    f = lambda *s: (rng.standard_normal(s) * 0.05).astype(np.float32)
    w.add_tensor("token_embd.weight", f(len(tokens), 64))
    w.add_tensor("output_norm.weight", f(64) + 1)
    shapes = {"attn_q": (64, 64), "attn_k": (64, 64), "attn_v": (64, 64), "attn_output": (64, 64),
              "ffn_gate": (128, 64), "ffn_up": (128, 64), "ffn_down": (64, 128)}
    for name, shape in shapes.items():
        w.add_tensor(f"blk.0.{name}.weight", f(*shape))
    w.add_tensor("blk.0.attn_norm.weight", f(64) + 1)
    w.add_tensor("blk.0.ffn_norm.weight", f(64) + 1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def compare(d, folder):
    import sentencepiece as spm
    import tokenizers

    sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "m.model"))
    tk = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    cases = []
    for text in SAMPLES:
        ours = tk.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "sentencepiece": sp.encode(text), "ours": ours,
                      "decoded": tk.decode(ours), "sentencepiece_decoded": sp.decode(sp.encode(text)),
                      "with_bos": tk.encode(text).ids[:1]})
    print(json.dumps({"cases": cases}))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"make": make, "compare": compare}[cmd](*args)
