"""A patient's differentials over time, drawn with matplotlib as a PNG."""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def differentials_over_time(rows: Sequence[dict], types: Sequence[str], title: str) -> bytes:
    """rows: the patient's samples (patient_rows: date, name, cells, percent); one line per type over the
    samples that have a differential, in collection order."""
    shown = [r for r in rows if r["cells"]]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    x = [r["date"] or r["name"] for r in shown]
    for t in types:
        ax.plot(x, [r["percent"].get(t, 0.0) for r in shown], marker="o", label=t)
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of white cells")
    ax.set_title(f"Differential over time: {title}" if shown else f"{title}: no differential yet")
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize=8, ncol=len(types), loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
