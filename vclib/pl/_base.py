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


def empty(ax: plt.Axes, what: str, why: str) -> plt.Axes:
    """An empty plot that says in a sentence why it is empty (a shape of data the analysis cannot use), so a
    reader never meets a blank panel."""
    ax.text(0.5, 0.5, f"no {what}:\n{why}", ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    ax.set_axis_off()
    return ax


def why_empty(table: pd.DataFrame, default: str) -> str:
    """The reason a vclib table is empty (its first ``attrs["skipped"]`` entry), else ``default``."""
    return (table.attrs.get("skipped") or [{}])[0].get("reason") or default
