"""
Turn a C{bench/run.py} JSON result into Markdown tables and the
throughput-vs-concurrency plot.

    bench/.venvs/bench/bin/python bench/report.py bench/out/full.json \\
        --md bench/out/tables.md --png bench/throughput.png
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any


def fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def tables(data: dict[str, Any]) -> str:
    m = data["machine"]
    out = [
        f"Run: {m['date']}; {m['nproc']} cores ({m['cpu']}), {m['memGB']} GB; "
        f"kernel {m['kernel']}; load generator Python {m['loadgenPython']}; "
        f"load average before/after {m['loadavg'][0]:.2f} / {m.get('loadavgAfter', [float('nan')])[0]:.2f}.",
        "",
    ]
    for name, target in data["targets"].items():
        if "failed" in target:
            out.append(f"- **{name} did not start**: `{target['failed'][:300]}`")
    out.append("")
    for scenario, results in data["results"].items():
        direct = results.get("direct", {})
        base = direct.get("rps") or float("nan")
        baseTTFB = direct.get("ttfbP50ms", float("nan"))
        out.append(f"### {scenario}")
        out.append("")
        k0in = (results.get("K0IN") or {}).get("rps") or float("nan")
        floor = (results.get("twisted.web floor") or {}).get("rps") or float("nan")
        out.append("| target | ok / errors | req/s | × direct | × K0IN | × floor | p50 ms | p99 ms | TTFB p50 ms | TTFB p99 ms | chunks/s | CPU ms/req | peak RSS MB |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, r in results.items():
            if not isinstance(r, dict):
                continue
            if "failed" in r:
                out.append(f"| {name} | failed: {r['failed'][:120]} |  |  |  |  |  |  |  |  |  |  |  |")
                continue
            ratio = r["rps"] / base if base == base and base else float("nan")
            errors = f"{r['ok']} / {r['errors']}"
            if r["errors"]:
                errors += f" ({'; '.join(r['errorSamples'])[:80]})"
            ttfb = fmt(r["ttfbP50ms"], 2)
            if name != "direct" and baseTTFB == baseTTFB and r["ttfbP50ms"] == r["ttfbP50ms"]:
                ttfb += f" (+{r['ttfbP50ms'] - baseTTFB:.2f})"
            vsK0IN = f"{r['rps'] / k0in:.2f}" if k0in == k0in else "–"
            vsFloor = f"{r['rps'] / floor:.2f}" if floor == floor else "–"
            out.append(
                f"| {name} | {errors} | {fmt(r['rps'])} | {ratio:.3f} | {vsK0IN} | {vsFloor} | {fmt(r['p50ms'], 1)} | {fmt(r['p99ms'], 1)} "
                f"| {ttfb} | {fmt(r['ttfbP99ms'], 2)} | {fmt(r['chunksPerS'])} | {fmt(r['cpuMsPerReq'], 2)} "
                f"| {fmt(r['peakRSSMB'], 1)} |"
            )
            if "rssSamplesMB" in r:
                samples = r["rssSamplesMB"]
                if samples:
                    values = [v for _, v in samples]
                    out.append(
                        f"|  | RSS over the run (MB): start {values[0]:.1f}, min {min(values):.1f}, "
                        f"max {max(values):.1f}, end {values[-1]:.1f} ({len(values)} samples) |  |  |  |  |  |  |  |  |  |  |  |"
                    )
        out.append("")
    return "\n".join(out)


def plot(data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for scenario, results in data["results"].items():
        if not scenario.startswith("stream c="):
            continue
        concurrency = results["concurrency"]
        for name, r in results.items():
            if isinstance(r, dict) and "rps" in r:
                series.setdefault(name, []).append((concurrency, r["rps"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, points in series.items():
        points.sort()
        ax.plot([c for c, _ in points], [v for _, v in points], marker="o", label=name,
                linestyle="--" if name == "direct" else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent connections")
    ax.set_ylabel("streams per second (100 chunks each)")
    ax.set_title(f"Streamed /api/chat throughput, {data['machine']['nproc']} cores, {data['machine']['date']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result")
    parser.add_argument("--md")
    parser.add_argument("--png")
    args = parser.parse_args()
    with open(args.result) as f:
        data = json.load(f)
    text = tables(data)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    if args.png:
        plot(data, args.png)
