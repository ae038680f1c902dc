"""One f32 matmul in MLX from Python, timed like the worker's `Matmul` check: the inputs are
evaluated first, then one A·B is timed. Prints JSON {size, ms, sum}. Run it once per
process (each process is a cold start, as each `mlxsup info` is)."""
import json
import sys
import time

import mlx.core as mx

n = int(sys.argv[1])
i = mx.arange(n)[:, None]
j = mx.arange(n)[None, :]
a = ((i + 2 * j) % 7).astype(mx.float32)
b = ((3 * i + j) % 5).astype(mx.float32)
mx.eval(a, b)
t = time.perf_counter()
c = a @ b
mx.eval(c)
ms = (time.perf_counter() - t) * 1e3
print(json.dumps({"size": n, "ms": ms, "sum": c.astype(mx.float32).sum().item()}))
