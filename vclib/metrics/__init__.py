"""Metrics: pure functions on arrays, a DE engine, and ``evaluate`` into one tidy table.

* Array metrics (no AnnData): :func:`mse`, :func:`mae`, :func:`l2`, :func:`pearson`, :func:`cosine`,
  :func:`discrimination_score` (PDS), :func:`rank_metric`, :func:`hit_rate_at_k`, :func:`de_overlap`,
  :func:`de_precision`, :func:`de_direction`, :func:`de_spearman`, :func:`distance_matrix`.
* DE engine: :func:`rank_genes` (Wilcoxon rank-sum vs the context's control, BH within each condition).
* :func:`evaluate`: predictions vs observed cells → one row per (context, perturbation, metric).
  :data:`REGISTRY` / :func:`metric_table` say for each metric whether higher is better and its value for a
  perfect and a constant predictor.
* Summaries: :func:`aggregate` (bootstrap CIs), :func:`compare` (paired model − baseline),
  :func:`ceiling` (split-half noise ceiling), :func:`calibrate` ((u − b)/(c − b)).

Definitions: see ``science.md`` (Metrics) in the project documentation and each docstring.
"""

from vclib.metrics._de import DEResult, log2_fold_change, rank_genes
from vclib.metrics._evaluate import DE_METRICS, REGISTRY, Metric, evaluate, metric_table
from vclib.metrics._functions import (
    cosine,
    de_direction,
    de_overlap,
    de_precision,
    de_spearman,
    discrimination_score,
    distance_matrix,
    hit_rate_at_k,
    l2,
    mae,
    mse,
    pearson,
    prediction_distances,
    rank_metric,
    top_expressed,
)
from vclib.metrics._summary import CEILING, aggregate, calibrate, ceiling, compare, predict_control, to_full_size

__all__ = [
    "CEILING", "DE_METRICS", "DEResult", "Metric", "REGISTRY", "aggregate", "calibrate", "ceiling", "compare",
    "cosine", "de_direction", "de_overlap", "de_precision", "de_spearman", "discrimination_score",
    "distance_matrix", "evaluate", "hit_rate_at_k", "l2", "log2_fold_change", "mae", "metric_table", "mse",
    "pearson", "predict_control", "prediction_distances", "rank_genes", "rank_metric", "to_full_size",
    "top_expressed",
]
