#!/usr/bin/env python3
"""Issue 16's accuracy table: predicted vs measured MLX peak of `mlxsup run --image` with
0, 1 and 4 images at two resolutions, on a make-model Qwen2.5-VL (and one Qwen2-VL and
one 4-bit row), and the vision tower's own term (the `vision` event: the tower's MLX peak
above what MLX held when it started, against the vision term of the estimate).

  .venv/bin/python scripts/bench_vision.py [--quick] [--out bench-out]

Writes OUT/vision-runs.jsonl (one line per run) and OUT/vision.md (the table). The
predictions are the built-in model's (MLXSUP_CALIBRATION=off unless the caller names a
store). Standard library only: the PNGs are written here (zlib), no Pillow needed.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import zlib

BIN = "target/release/mlxsup"
PROMPT = "Describe the picture in one sentence."


def png(path, w, h, seed):
    """A deterministic RGB PNG of w × h with some structure (gradients and a checker)."""
    rows = []
    for y in range(h):
        row = bytearray([0])
        for x in range(w):
            c = ((x // 16) ^ (y // 16)) & 1
            row += bytes(((x * 255 // max(w - 1, 1) + seed * 37) & 255,
                          (y * 255 // max(h - 1, 1)) & 255,
                          (200 if c else 40) ^ (seed & 63)))
        rows.append(bytes(row))
    raw = b"".join(rows)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def make_model(out, name, arch, quant=None):
    d = os.path.join(out, name)
    if not os.path.exists(os.path.join(d, "config.json")):
        cmd = [BIN, "make-model", d, "--arch", arch, "--hidden", "1024", "--layers", "8",
               "--heads", "16", "--kv-heads", "4",
               "--intermediate", "3072" if arch == "qwen2_vl" else "2816",
               "--vocab", "32000", "--seed", "7"]
        if quant:
            cmd += ["--quant-bits", quant]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    return d


def run(model, compute, images, context=4096):
    cmd = [BIN, "run", model, "--json", "--compute", compute, "--context", str(context),
           "--max-tokens", "8", "--prompt", PROMPT, "--budget", "16GiB"]
    for im in images:
        cmd += ["--image", im]
    p = subprocess.run(cmd, capture_output=True, text=True)
    ev = {}
    for line in p.stdout.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        ev[e.get("event")] = e
    if "done" not in ev:
        sys.exit(f"bench_vision: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    return ev


def pct(pred, meas):
    return (pred - meas) / meas * 100.0 if meas else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--quick", action="store_true", help="f32 rows only")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if os.environ.get("MLXSUP_BENCH_STORE") == "1" or not os.environ.get("MLXSUP_CALIBRATION"):
        os.environ["MLXSUP_CALIBRATION"] = "off"
    sizes = [(448, 448), (896, 672)]
    pics = {}
    for (w, h) in sizes:
        pics[(w, h)] = []
        for i in range(4):
            p = os.path.join(a.out, f"vision-{w}x{h}-{i}.png")
            if not os.path.exists(p):
                png(p, w, h, i)
            pics[(w, h)].append(p)
    vl25 = make_model(a.out, "qwen2_5_vl-1024", "qwen2_5_vl")
    vl2 = make_model(a.out, "qwen2_vl-1024", "qwen2_vl")
    vl25q = make_model(a.out, "qwen2_5_vl-1024-q4", "qwen2_5_vl", "4")

    cases = []  # (label, model, compute, images, size)
    for compute in (["f32"] if a.quick else ["f32", "native"]):
        cases.append(("qwen2_5_vl", vl25, compute, 0, None))
        for size in sizes:
            for n in (1, 4):
                # bf16's CPU tower is single-threaded: four large images take ~10 min.
                if compute == "native" and size == (896, 672) and n == 4:
                    continue
                cases.append(("qwen2_5_vl", vl25, compute, n, size))
    cases += [("qwen2_vl", vl2, "f32", 0, None), ("qwen2_vl", vl2, "f32", 1, (448, 448)),
              ("qwen2_vl", vl2, "f32", 1, (896, 672)),
              ("qwen2_5_vl 4-bit", vl25q, "native", 0, None),
              ("qwen2_5_vl 4-bit", vl25q, "native", 1, (448, 448))]
    rows = []
    log = open(os.path.join(a.out, "vision-runs.jsonl"), "w")
    for label, model, compute, n, size in cases:
        ims = pics[size][:n] if n else []
        ev = run(model, compute, ims)
        d, est, vis = ev["done"], ev["estimate"], ev.get("vision")
        r = {
            "model": label, "compute": ev["loaded"]["compute_dtype"], "images": n,
            "size": f"{size[0]}x{size[1]}" if size else "",
            "context_used": d.get("context_used"), "planned_bytes": est["total_bytes"],
            "predicted_bytes": d["estimate_used_bytes"], "peak_bytes": d["peak_bytes"],
            "tower_bytes": vis["activation_bytes"] if vis else None,
            "tower_predicted_bytes": vis["predicted_bytes"] if vis else None,
        }
        print(json.dumps(r), file=log, flush=True)
        print(json.dumps(r), file=sys.stderr)
        rows.append(r)
    log.close()

    mb = lambda b: f"{b / 1e6:.1f} MB"
    errs = [pct(r["predicted_bytes"], r["peak_bytes"]) for r in rows]
    terrs = [pct(r["tower_predicted_bytes"], r["tower_bytes"]) for r in rows if r["tower_bytes"]]
    md = ["| model | compute | images | context used | predicted (at the context used) "
          "| measured peak | error | tower predicted | tower measured | tower error |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r, e in zip(rows, errs):
        im = f"{r['images']} × {r['size']}" if r["images"] else "0"
        t = (f"{mb(r['tower_predicted_bytes'])} | {mb(r['tower_bytes'])} | "
             f"{pct(r['tower_predicted_bytes'], r['tower_bytes']):+.1f}%") if r["tower_bytes"] else "— | — | —"
        md.append(f"| {r['model']} | {r['compute']} | {im} | {r['context_used']} | "
                  f"{mb(r['predicted_bytes'])} | {mb(r['peak_bytes'])} | {e:+.1f}% | {t} |")
    s = sorted(abs(e) for e in errs)
    med = (s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2) if s else 0
    md.append("")
    md.append(f"{len(rows)} runs: median |error| {med:.2f}%, worst under {min(errs):+.2f}%, "
              f"worst over {max(errs):+.2f}%; tower term median |error| "
              f"{sorted(abs(x) for x in terrs)[len(terrs) // 2] if terrs else 0:.2f}%.")
    with open(os.path.join(a.out, "vision.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
