"""Plots. Each takes a tidy table or AnnData, accepts ``ax=``, returns the Axes, and never shows or saves."""

from vclib.pl._benchmark import leaderboard, versus_baseline
from vclib.pl._coverage import coverage_heatmap, effect_sizes

__all__ = ["coverage_heatmap", "effect_sizes", "leaderboard", "versus_baseline"]
