#!/usr/bin/env python3
"""mlx_lm_reference.py for quantized MoE folders (worker/tests/families.rs).

mlx-lm 0.32.2's QuantizedSwitchLinear calls `mx.gather_qmm(..., global_scale=None)`, an
argument MLX 0.32.2 does not have, so mlx-lm cannot run a quantized MoE on this pair.
For affine quantization the argument is always None (it exists for nvfp4 only): this
shim drops it when None and refuses anything else, and leaves every other op to mlx-lm.
"""

import os
import sys

import mlx.core as mx

_gather_qmm = mx.gather_qmm


def gather_qmm(*args, global_scale=None, **kwargs):
    if global_scale is not None:
        raise ValueError("global_scale (nvfp4) needs a newer MLX than 0.32.2")
    return _gather_qmm(*args, **kwargs)


mx.gather_qmm = gather_qmm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mlx_lm_reference  # noqa: E402

if __name__ == "__main__":
    mlx_lm_reference.main()
