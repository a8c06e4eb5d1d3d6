"""`make bench`: every benchmark, ratios measured side by side in one run; results written to BENCHMARKS.md
(the block between the 'latest make bench' markers) and bench-results/latest.json, with the machine."""
from __future__ import annotations

import importlib
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ["benchmarks.bench_training", "benchmarks.bench_mkl_cbwr", "benchmarks.bench_token_losses", "benchmarks.bench_fit",
           "benchmarks.bench_qdg_gradients", "benchmarks.bench_qdg_similarity", "benchmarks.bench_qdg_clustering"]
BEGIN, END = "<!-- latest make bench: begin -->", "<!-- latest make bench: end -->"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> int:
    from flows.prefect_home import configure_prefect

    configure_prefect()
    results = []
    for name in BENCHES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        print(f"running {name} ...", flush=True)
        out = mod.run()
        # a benchmark returns one result, or {device: result}
        for r in ([out] if "ratio" in out else list(out.values())):
            r.setdefault("name", name.rsplit(".", 1)[-1].removeprefix("bench_").replace("_", " "))
            r.setdefault("goal", getattr(mod, "GOAL", ""))
            results.append(r)
            print(f"  {r['name']} [{r['device']}]: ratio {r['ratio']:.2f} (goal {r['goal']})", flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    lines = [BEGIN, f"Run {stamp} on: {info}", "", "| benchmark | device | ratio | goal | details |", "|---|---|---|---|---|"]
    for r in results:
        details = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                            if k not in ("name", "ratio", "goal", "device"))
        lines.append(f"| {r['name']} | {r['device']} | **{r['ratio']:.2f}x** | {r['goal']} | {details} |")
    lines.append(END)
    block = "\n".join(lines)
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text += "\n" + block + "\n"
    path.write_text(text)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({"machine": info, "time": stamp, "results": results}, indent=2))
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
