#!/usr/bin/env python3
"""Peak memory of mlx-vlm's Qwen2.5-VL vision tower per image size (BENCHMARKS.md §11).

  .venv-vlm/bin/python scripts/vision_peaks.py CONFIG_JSON WxH...

Builds the tower of CONFIG_JSON's vision_config (e.g. the fixture corpus's Qwen2.5-VL-7B)
with random bf16 weights, then for each size runs the tower on pixel values of the shape
the processor gives that size and prints, as one JSON line each, the patches and the
peak MLX memory above the weights (mx.get_peak_memory after mx.reset_peak_memory).
"""

import json
import sys


def main(config_path, sizes):
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_vlm.models.qwen2_5_vl.config import VisionConfig
    from mlx_vlm.models.qwen2_5_vl.vision import VisionModel
    from mlx_vlm.models.qwen3_vl.processing_qwen3_vl import _smart_resize_image

    cfg = json.load(open(config_path))
    vc = VisionConfig.from_dict(cfg["vision_config"])
    mx.random.seed(0)
    tower = VisionModel(vc)
    tower.set_dtype(mx.bfloat16)
    mx.eval(tower.parameters())
    weights = sum(v.nbytes for _, v in tree_flatten(tower.parameters()))
    cols = 3 * vc.temporal_patch_size * vc.patch_size ** 2
    for size in sizes:
        w, h = (int(x) for x in size.split("x"))
        rh, rw = _smart_resize_image(h, w, factor=vc.patch_size * vc.spatial_merge_size,
                                     min_pixels=3136, max_pixels=12845056)
        gh, gw = rh // vc.patch_size, rw // vc.patch_size
        pv = mx.random.normal((gh * gw, cols)).astype(mx.bfloat16)
        mx.eval(pv)
        mx.clear_cache()
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        y = tower(pv, mx.array([[1, gh, gw]]))
        mx.eval(y)
        peak = mx.get_peak_memory() - base
        print(json.dumps({"size": size, "resized": [rw, rh], "patches": gh * gw,
                          "tokens": gh * gw // 4, "peak_bytes": int(peak),
                          "weights_bytes": int(weights), "mlx": mx.__version__}), flush=True)
        del y, pv


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
