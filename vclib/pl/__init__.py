"""Plots. Each takes a tidy table or AnnData, accepts ``ax=``, returns the Axes, and never shows or saves."""

from vclib.pl._benchmark import leaderboard, versus_baseline
from vclib.pl._coverage import (
    coverage_heatmap,
    distance_heatmap,
    distance_vs_transfer,
    effect_sizes,
    next_experiments,
    overlap_heatmap,
    target_coverage,
    transfer_pairs,
    transfer_vs_truth,
)

__all__ = ["coverage_heatmap", "distance_heatmap", "distance_vs_transfer", "effect_sizes", "leaderboard",
           "next_experiments", "overlap_heatmap", "target_coverage", "transfer_pairs", "transfer_vs_truth",
           "versus_baseline"]
