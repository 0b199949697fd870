"""What every plot shares."""

from __future__ import annotations

import matplotlib.pyplot as plt


def axes(ax: plt.Axes | None, size: tuple[float, float]) -> plt.Axes:
    """The given Axes, or a new figure's of ``size`` inches."""
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax
