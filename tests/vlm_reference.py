#!/usr/bin/env python3
"""mlx-vlm (from .venv-vlm) on a `mlxsup make-model --arch qwen2_5_vl` folder, for
tests/vlm.rs. Prints one JSON object.

  vlm_reference.py generate DIR OUT_DIR MAX_TOKENS IMAGE...
                   (no image: a text-only prompt; env VLM_QUESTION: the question)
  vlm_reference.py tower DIR PIXELS.f32 GRIDS_JSON OUT.f32
                   mlx-vlm's vision tower on the given pixel_values (little-endian f32,
                   rows of C*T*P*P) for the images of GRIDS_JSON ([[t, h, w], ...]); its
                   output written as little-endian f32

Loads DIR with mlx_vlm.load (its processor read from the folder), renders the chat
template for one user message with the images and a question, runs the processor, writes
its pixel_values to OUT_DIR/pixel_values.f32 (little-endian) and greedily generates
MAX_TOKENS tokens with mlx_vlm.stream_generate (temperature 0).
"""

import json
import os
import sys

import numpy as np


def generate(model_dir, out, max_tokens, images):
    import mlx.core as mx
    from PIL import Image
    from mlx_vlm import load, stream_generate

    model, processor = load(model_dir)
    question = os.environ.get("VLM_QUESTION", "What is in the picture?")
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    prompt = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    pil = [Image.open(p).convert("RGB") for p in images]
    if pil:
        inputs = processor(text=[prompt], images=pil, return_tensors="np")
        np.asarray(inputs["pixel_values"], dtype="<f4").tofile(os.path.join(out, "pixel_values.f32"))
        grids = np.asarray(inputs["image_grid_thw"]).tolist()
        shape = list(np.asarray(inputs["pixel_values"]).shape)
    else:
        inputs = processor(text=[prompt], return_tensors="np")
        grids, shape = [], []
    ids = np.asarray(inputs["input_ids"])
    tokens = []
    for r in stream_generate(model, processor, prompt, image=list(images) or None,
                             max_tokens=max_tokens, temperature=0.0):
        tokens.append(int(r.token))
    print(json.dumps({
        "mlx": mx.__version__,
        "prompt": prompt,
        "image_tokens": int((ids == model.config.image_token_id).sum()),
        "input_ids": ids[0].tolist(),
        "image_grid_thw": grids,
        "pixel_values_shape": shape,
        "tokens": tokens,
    }))


def tower(model_dir, pixels, grids, out):
    import mlx.core as mx
    from mlx_vlm import load

    model, _ = load(model_dir)
    pv = np.fromfile(pixels, dtype="<f4")
    vt = model.vision_tower
    cols = vt.patch_embed.in_channels * vt.patch_embed.temporal_patch_size * vt.patch_embed.patch_size ** 2
    pv = mx.array(pv.reshape(-1, cols)).astype(vt.patch_embed.proj.weight.dtype)
    y = vt(pv, mx.array(json.loads(grids)), output_hidden_states=False)
    np.asarray(y.astype(mx.float32), dtype="<f4").tofile(out)
    print(json.dumps({"shape": list(y.shape), "dtype": str(y.dtype)}))


if __name__ == "__main__":
    if sys.argv[1] == "generate":
        generate(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
    elif sys.argv[1] == "tower":
        tower(*sys.argv[2:6])
    else:
        sys.exit(__doc__)
