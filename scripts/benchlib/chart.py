"""The PNG chart of docs/benchmarks.md (matplotlib, from the ``[bench]`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib.report import E2E_ROWS, INGEST_ROWS


def _bars(ax: Any, section: dict[str, Any], rows: tuple[tuple[str, str], ...], title: str,
          ours_prefix: str) -> None:
    labels, values, colors = [], [], []
    for key, label in rows:
        item = section.get(key)
        if isinstance(item, dict) and "median" in item:
            labels.append(label.replace("`", ""))
            values.append(item["median"])
            colors.append("#c0392b" if key.startswith(ours_prefix) else "#7f8c8d")
    ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel("entries/s (log scale)")
    for i, v in enumerate(values[::-1]):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)


def write_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(12, 12), gridspec_kw={"height_ratios": [4, 3, 3]})
    _bars(axes[0], results["e2e"], E2E_ROWS, "End-to-end, 2 workers", "ours")
    _bars(axes[1], results["ingest"], INGEST_ROWS, "Ingest", "ours")
    flat = results["flatness"]
    levels = flat["levels"]
    for kind, label in (("enqueue_us", "enqueue"), ("flush_us", "flush")):
        line = axes[2].plot(levels, [flat[kind][str(x)]["median"] for x in levels],
                            marker="o", label=label)[0]
        ref = flat.get(kind.replace("_us", "_ref_us"))
        if ref:
            # the 1k queue measured in the same rounds: what each level is divided by
            axes[2].plot(levels, [ref[str(x)]["median"] for x in levels], linestyle="--",
                         color=line.get_color(), label=f"{label}, 1k queue beside it")
    axes[2].set_xscale("log")
    axes[2].set_ylim(bottom=0)
    axes[2].set_xlabel("pending entries")
    axes[2].set_ylabel("µs per entry")
    axes[2].set_title("Flatness: cost per entry as the buffer grows")
    axes[2].legend()
    meta = results["meta"]
    fig.suptitle(f"redis-batcher benchmark {meta['started']} ({meta['cpus']} CPUs, "
                 f"redis {meta['redis_version']}, median of {meta['repeat']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
