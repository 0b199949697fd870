"""Plots. Each takes a tidy table or AnnData, accepts ``ax=``, returns the Axes, and never shows or saves."""

from vclib.pl._benchmark import coverage_capacity, leaderboard, versus_baseline
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
from vclib.pl._failures import (
    delta_scatter,
    error_vs_covariate,
    failure_gallery,
    hit_rate_curves,
    prediction_scatter,
    regime_map,
    spread,
)

__all__ = ["coverage_capacity", "coverage_heatmap", "delta_scatter", "distance_heatmap", "distance_vs_transfer",
           "effect_sizes", "error_vs_covariate", "failure_gallery", "hit_rate_curves", "leaderboard",
           "next_experiments", "overlap_heatmap", "prediction_scatter", "regime_map", "spread",
           "target_coverage", "transfer_pairs", "transfer_vs_truth", "versus_baseline"]
