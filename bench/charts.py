"""PNG charts of a run (matplotlib, headless): one per scenario, next to RESULTS.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.scenarios.base import ScenarioResult

__all__ = ["write_charts"]


def _bars(ax: Any, labels: list[str], values: list[float], title: str, unit: str) -> None:
    bars = ax.barh(labels, values, color="#4C72B0")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit)
    ax.invert_yaxis()
    for bar, value in zip(bars, values, strict=True):
        text = f" {value:,.0f}" if value >= 100 else f" {value:,.2f}"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, text,
                va="center", fontsize=8)  # fmt: skip
    ax.margins(x=0.25)


def _latency(ax: Any, r: ScenarioResult) -> None:
    labels = [m.label for m in r.measurements]
    y = range(len(labels))
    p50 = [m.p50_ms for m in r.measurements]
    p99 = [m.p99_ms for m in r.measurements]
    ax.barh([i - 0.2 for i in y], p50, height=0.4, label="p50", color="#55A868")
    ax.barh([i + 0.2 for i in y], p99, height=0.4, label="p99", color="#C44E52")
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_title("latency", fontsize=10)
    ax.set_xlabel("ms")
    positive = [v for v in p50 + p99 if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
    ax.legend(fontsize=8)


def _chart(plt: Any, r: ScenarioResult, path: Path) -> None:
    if r.name == "purge" and r.extra.get("latencies_ms"):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.hist(r.extra["latencies_ms"], bins=50, color="#4C72B0")
        m = r.measurements[0]
        for value, name, color in ((m.p50_ms, "p50", "#55A868"), (m.p99_ms, "p99", "#C44E52")):
            ax.axvline(value, color=color, linestyle="--", label=f"{name} {value:.1f} ms")
        ax.set_xlabel("ms from the call to applied in all 3 regions")
        ax.set_ylabel("purges")
        ax.legend()
    elif r.name == "autoinv" and r.extra.get("direct_latencies_ms"):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for m, color in zip(r.measurements, ("#4C72B0", "#DD8452"), strict=False):
            values = r.extra.get(f"{m.name}_latencies_ms") or []
            ax.hist(values, bins=40, alpha=0.6, color=color,
                    label=f"{m.label} (p50 {m.p50_ms:.1f}, p99 {m.p99_ms:.1f} ms)")  # fmt: skip
        ax.set_xlabel("ms")
        ax.set_ylabel("writes")
        ax.legend(fontsize=7)
    elif r.name == "memory" and r.extra.get("rss_series"):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        names = {
            "fill": "hot tier on: caching (misses)",
            "hits": "hot tier on: serving (hits)",
            "redis-hits": "hot tier off: serving (Redis hits)",
        }
        colors = {"fill": "#C44E52", "hits": "#4C72B0", "redis-hits": "#55A868"}
        for phase, name in names.items():
            points = [p for p in r.extra["rss_series"] if p["phase"] == phase]
            ax.plot([p["s"] for p in points], [p["mib"] for p in points], color=colors[phase],
                    label=name)  # fmt: skip
        ax.set_xlabel("seconds")
        ax.set_ylabel("node RSS, MiB")
        ax.set_ylim(bottom=0)
        ax.legend(loc="lower right")
    else:
        height = 1.2 + 0.55 * len(r.measurements)
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, height))
        _bars(left, [m.label for m in r.measurements], [m.rps for m in r.measurements],
              "throughput", "requests/s")  # fmt: skip
        _latency(right, r)
        right.set_yticklabels([])
    fig.suptitle(f"{r.name}: {r.title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_charts(out_dir: Path, results: list[ScenarioResult]) -> dict[str, str]:
    """One PNG per measured scenario; returns scenario -> file name (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    written = {}
    for r in results:
        if r.status != "ok" or not r.measurements:
            continue
        path = out_dir / f"{r.name}.png"
        _chart(plt, r, path)
        written[r.name] = path.name
    return written
