#!/usr/bin/env python3
"""The reference image processors for vision/tests/reference.rs, run from .venv-vlm.

  reference_processor.py OUT_DIR FILE...
  reference_processor.py --sizes      stdin: JSON [[h, w, min_pixels, max_pixels], ...];
                                      prints both references' smart_resize of each
                                      ([h, w] or null where they refuse it)

For each FILE (index i) writes into OUT_DIR:
  i.rgb          Pillow's decode, convert("RGB"), as raw bytes (H, W, 3)
  i.mlxvlm.f32   mlx-vlm's Qwen3VLImageProcessor (the one mlx-vlm uses for
                 Qwen2/2.5-VL, patch_size 14) pixel_values, little-endian f32
  i.hf.f32       transformers' Qwen2VLImageProcessorPil pixel_values
and prints one JSON object: per file the decoded size, both grids and shapes.
"""

import json
import os
import sys

import numpy as np
from PIL import Image


def main(out, files):
    from mlx_vlm.models.qwen3_vl.processing_qwen3_vl import Qwen3VLImageProcessor
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    mv = Qwen3VLImageProcessor(patch_size=14, temporal_patch_size=2, merge_size=2,
                               min_pixels=56 * 56, max_pixels=28 * 28 * 1280,
                               image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD))
    hf = Qwen2VLImageProcessorPil()
    report = []
    for i, f in enumerate(files):
        img = Image.open(f).convert("RGB")
        rgb = np.asarray(img, dtype=np.uint8)
        rgb.tofile(os.path.join(out, f"{i}.rgb"))
        a = mv(images=[img])
        b = hf(images=[img], return_tensors="np")
        np.asarray(a["pixel_values"], dtype="<f4").tofile(os.path.join(out, f"{i}.mlxvlm.f32"))
        np.asarray(b["pixel_values"], dtype="<f4").tofile(os.path.join(out, f"{i}.hf.f32"))
        report.append({
            "size": [img.height, img.width],
            "mlxvlm_grid": [int(x) for x in a["image_grid_thw"][0]],
            "hf_grid": [int(x) for x in b["image_grid_thw"][0]],
            "mlxvlm_shape": list(a["pixel_values"].shape),
            "hf_shape": list(b["pixel_values"].shape),
        })
    print(json.dumps(report))


def sizes(cases):
    from mlx_vlm.models.qwen3_vl.processing_qwen3_vl import _smart_resize_image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    def one(f, h, w, lo, hi):
        try:
            return list(f(h, w, factor=28, min_pixels=lo, max_pixels=hi))
        except ValueError:
            return None

    print(json.dumps([{"mlxvlm": one(_smart_resize_image, *c), "hf": one(smart_resize, *c)} for c in cases]))


if __name__ == "__main__":
    if sys.argv[1] == "--sizes":
        sizes(json.load(sys.stdin))
    else:
        main(sys.argv[1], sys.argv[2:])
