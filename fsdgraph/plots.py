"""PNG plots of a run report (``fsdgraph report RUN.json --plots DIR``).

Three pictures, each answering one question:

* ``bytes_per_layer.png`` — which layers move the data, and from which workers;
* ``time_per_layer.png`` — per layer, the slowest worker's compute, wait and codec time;
* ``timeline.png`` — when each worker ran each layer (alternating shades), from the first
  invocation: stragglers and late starts show as ragged edges.

matplotlib is an optional dependency (``pip install fsdgraph[plot]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsdgraph.errors import InputError


def write_plots(report: Mapping[str, Any], directory: str | Path) -> list[Path]:
    """Write the three PNGs into ``directory``; return their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InputError("plots need matplotlib: pip install 'fsdgraph[plot]'") from exc
    grid = report.get("per_worker_layer")
    if not grid:
        raise InputError("this report has no per-worker layer data (per_worker_layer) to plot")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    title = (f"{report['layers']} layers, {report['workers']} workers, {report['channel']} "
             f"channel, {report['partitioner']} partition")
    paths = []

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for w, row in enumerate(grid["bytes_sent"]):
        ax.plot(range(len(row)), [max(b, 1) for b in row], lw=1, label=f"worker {w}")
    ax.set_yscale("log")
    ax.set(xlabel="layer", ylabel="bytes sent", title=f"Bytes sent per layer — {title}")
    if len(grid["bytes_sent"]) <= 16:
        ax.legend(fontsize="small", ncol=2)
    paths.append(_save(fig, out / "bytes_per_layer.png"))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    layers = report["per_layer"]
    x = [e["layer"] for e in layers]
    bottom = [0.0] * len(layers)
    for name, color in (("compute_s", "tab:blue"), ("wait_s", "tab:orange"),
                        ("codec_s", "tab:green")):
        values = [1e3 * e[name] for e in layers]
        ax.bar(x, values, bottom=bottom, color=color, width=1.0, label=name[:-2])
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set(xlabel="layer", ylabel="ms (slowest worker)",
           title=f"Time per layer — {title}")
    ax.legend()
    paths.append(_save(fig, out / "time_per_layer.png"))

    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.35 * len(grid["started_at"])))
    origin = report.get("invoked_at") or min(r[0] for r in grid["started_at"] if r)
    for w, (starts, worker) in enumerate(zip(grid["started_at"], report["per_worker"],
                                             strict=True)):
        ends = [*starts[1:], worker.get("finished_at", starts[-1])]
        spans = [(s - origin, e - s) for s, e in zip(starts, ends, strict=True)]
        ax.broken_barh(spans, (w - 0.4, 0.8),
                       facecolors=["tab:blue" if i % 2 else "tab:cyan" for i in range(len(spans))])
    ax.set(xlabel="seconds since the first invocation", ylabel="worker",
           title=f"Timeline (alternate shades: layers) — {title}")
    ax.set_yticks(range(len(grid["started_at"])))
    paths.append(_save(fig, out / "timeline.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
