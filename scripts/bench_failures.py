"""Death → failure-report latency of `mlxsup run`: runs the model with each fault injected
N times, reads stdout as it arrives, and compares the failure event's arrival time with
the `unix_us=` stamp the worker writes just before it dies. Prints a markdown table."""
import json
import statistics
import subprocess
import sys
import time

mlxsup, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = []
for fault in ["abort-metal-oom@decode:2", "segv@decode:2", "kill@decode:2", "exit:3@decode:2"]:
    lat = []
    kinds = set()
    for _ in range(n):
        p = subprocess.Popen(
            [mlxsup, "run", model, "--json", "--max-tokens", "8", "--context", "512",
             "--inject-fault", fault],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in p.stdout:
            at = time.time()
            ev = json.loads(line)
            if ev.get("event") == "failure":
                kinds.add(ev["kind"])
                stamp = [l for l in ev["stderr_tail"].splitlines() if "unix_us=" in l]
                if stamp:
                    died = int(stamp[0].split("unix_us=")[1]) / 1e6
                    lat.append((at - died) * 1e3)
        p.wait()
    rows.append((fault, ",".join(sorted(kinds)), len(lat), statistics.median(lat), max(lat)))
print("| fault | classified as | runs | median ms | max ms |")
print("|---|---|---:|---:|---:|")
for r in rows:
    print(f"| `{r[0]}` | `{r[1]}` | {r[2]} | {r[3]:.2f} | {r[4]:.2f} |")
