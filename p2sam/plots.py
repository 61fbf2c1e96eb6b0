"""Per-patient plot of the structure's volume over visits, with its uncertainty band.

The band is the 90% interval of the volumes of the uncertainty samples (qc.volume_interval_90_ml);
for 2-D pictures volumes are areas (mm^2 if the pixel size is known, else pixels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display in servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def volume_plot(
    path: str | Path,
    patient: str,
    visits: Sequence[str],
    volumes: Sequence[float | None],
    low: Sequence[float | None],
    high: Sequence[float | None],
    truth: Sequence[float | None] | None = None,
    unit: str = "mL",
) -> Path:
    """Write a PNG: predicted volume per visit (line), 90% band, ground truth where given."""
    x = list(range(len(visits)))
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    band = [(i, lo, hi) for i, lo, hi in zip(x, low, high) if lo is not None and hi is not None]
    if band:
        ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                        color="tab:orange", alpha=0.25, label="90% interval of samples")
    pts = [(i, v) for i, v in zip(x, volumes) if v is not None]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="tab:orange", label="P²SAM")
    if truth is not None and any(t is not None for t in truth):
        tp = [(i, t) for i, t in zip(x, truth) if t is not None]
        ax.plot([p[0] for p in tp], [p[1] for p in tp], "s--", color="tab:blue", label="ground truth", markersize=4)
    step = max(1, len(visits) // 12)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([visits[i] for i in x[::step]], rotation=0)
    ax.set_xlabel("visit")
    ax.set_ylabel(f"volume ({unit})")
    ax.set_title(f"{patient}: structure volume over visits")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
