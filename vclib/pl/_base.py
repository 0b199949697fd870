"""What every plot shares."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def axes(ax: plt.Axes | None, size: tuple[float, float]) -> plt.Axes:
    """The given Axes, or a new figure's of ``size`` inches."""
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax


def differences(rows: pd.DataFrame, labels, colours, *, ax: plt.Axes) -> plt.Axes:
    """One row per difference: its point (coloured by verdict), its CI bar, and the zero line."""
    y = np.arange(len(rows))
    diff = rows["difference"]
    ax.errorbar(diff, y, xerr=[diff - rows["ci_low"], rows["ci_high"] - diff], fmt="none", ecolor="0.6", capsize=2)
    ax.scatter(diff, y, c=list(colours), zorder=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, list(labels))
    ax.invert_yaxis()
    return ax
