"""Markdown tables for the suite and the BENCHMARKS.md writer (one section per suite)."""

from __future__ import annotations

import datetime
import platform
import re
import statistics
from pathlib import Path

import torch

from benchmarks import shapes


def machine() -> str:
    """CPU model, logical cores, torch version and threads, Python version."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}; load average at start {load}")


def training_tables(shape_names, peers, samples, ratio_base="torch.nn+ftz", peak_gflops=None) -> str:
    """Median ms (IQR) per peer x shape, the share of the matmul peak, then ratios to ``ratio_base`` and torch.nn."""
    head = "| peer | " + " | ".join(shape_names) + " |\n|---|" + "---:|" * len(shape_names) + "\n"
    rows = []
    for p in peers:
        cells = []
        for s in shape_names:
            r = samples.get((p, s))
            if r is None:
                cells.append("–")
            elif r.reference:
                cells.append(f"{r.median_ms:.1f}†")
            else:
                lo, hi = r.spread_ms
                cells.append(f"{r.median_ms:.2f} ({lo:.2f}–{hi:.2f})" if r.median_ms < 10
                             else f"{r.median_ms:.1f} ({lo:.1f}–{hi:.1f})")
        rows.append(f"| {p} | " + " | ".join(cells) + " |")
    out = ["Median ms per training step (interquartile range).", "", head + "\n".join(rows), ""]
    paths = [f"| {p} | " + " | ".join((samples.get((p, s)) and samples[(p, s)].path) or "–" for s in shape_names) + " |"
             for p in peers if any(samples.get((p, s)) and samples[(p, s)].path for s in shape_names)]
    if paths:
        out += ["Path each rnnkit layer took (`layer.last_path`).", "", head.rstrip("\n"), *paths, ""]
    if peak_gflops:
        out += [f"Share of the fp32 matmul peak ({peak_gflops:.0f} GFLOP/s: the best 3072 x 3072 product, measured "
                "in this run before and after the steps): the shape's matmul FLOPs per step (3 x the forward's; S4 33.4 GFLOP) "
                "over the median step time. Peers with another cell (minGRU/minLSTM) do other work and are left out.",
                "", head.rstrip("\n")]
        for p in peers:
            if "cell" in (shapes.PEERS[p][1] or {}):  # another cell than the shape's: other FLOPs
                continue
            cells = []
            for s in shape_names:
                r = samples.get((p, s))
                share = None if r is None else shapes.training_flops(shapes.SHAPES[s]) / (r.median_ms / 1e3) / 1e9 / peak_gflops
                cells.append("–" if share is None else f"{100 * share:.0f}%")
            out.append(f"| {p} | " + " | ".join(cells) + " |")
        out.append("")
    for base in (ratio_base, "torch.nn"):
        out += [f"Ratio to {base} (median / median; < 1 is faster).", "", head.rstrip("\n")]
        for p in peers:
            cells = []
            for s in shape_names:
                r, b = samples.get((p, s)), samples.get((base, s))
                cells.append("–" if r is None or b is None else f"{r.median_ms / b.median_ms:.2f}")
            out.append(f"| {p} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def generation_table(results) -> str:
    head = "| peer | batch | chars/s (median) | min–max |\n|---|---:|---:|---:|"
    rows = [f"| {p} | {b} | {statistics.median(v):,.0f} | {min(v):,.0f}–{max(v):,.0f} |"
            for (p, b), v in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
    return "\n".join([head, *rows])


def write_section(path: Path, suite: str, command: str, body: str) -> None:
    """Replace (or append) the section of ``suite`` in ``path``, keeping the other sections."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    section = (f"<!-- suite:{suite} -->\n## {suite}\n\nCommand: `{command}`  \nDate: {stamp}  \n"
               f"Machine: {machine()}\n\n{body.strip()}\n<!-- /suite:{suite} -->")
    text = path.read_text() if path.exists() else (
        "# Benchmarks\n\nMade by `python -m benchmarks` (see `benchmarks/__main__.py`); each section "
        "says the command, date and machine that made it.\n")
    pattern = re.compile(rf"<!-- suite:{re.escape(suite)} -->.*?<!-- /suite:{re.escape(suite)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
