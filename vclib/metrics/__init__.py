"""Metrics: pure functions on arrays, a DE engine, and ``evaluate`` into one tidy table.

* Array metrics (no AnnData): :func:`mse`, :func:`mae`, :func:`l2`, :func:`pearson`, :func:`cosine`,
  :func:`discrimination_score` (PDS), :func:`rank_metric`, :func:`hit_rate_at_k`, :func:`de_overlap`,
  :func:`de_precision`, :func:`de_direction`, :func:`de_spearman`, :func:`distance_matrix`.
* DE engine: :func:`rank_genes` (Wilcoxon rank-sum vs the context's control, BH within each condition).
* :func:`prepare` → :class:`Observed`: the observed cells validated once, with their pseudobulk, deltas, DE and
  split halves computed on first use and kept, for every scorer.
* :func:`evaluate`: predictions vs observed cells → one row per (context, perturbation, metric).
  :data:`CELL_EVAL` holds cell-eval 0.8.2's conventions and layout (``evaluate(pred, real, **CELL_EVAL)``).
  :data:`REGISTRY` / :func:`metric_table` say for each metric whether higher is better, its value for a
  perfect and a constant predictor, and how its noise ceiling is corrected.
* Summaries: :func:`aggregate` (bootstrap CIs over perturbations), :func:`compare` (paired model − baseline),
  :func:`ceiling` (split-half noise ceiling, corrected to a noise-free predictor), :func:`calibrate`
  ((u − b)/(c − b) where c − b is clearly positive), :func:`beyond_ceiling`.
* :func:`evaluate_files`: a prediction file scored against observed cells with a baseline
  (:func:`predict_context_mean` by default), the noise ceiling, CIs and calibrated scores, written to a folder
  (``vclib evaluate``); returns a :class:`Scorecard`.

Definitions: see ``science.md`` (Metrics) in the project documentation and each docstring.
"""

from vclib.metrics._de import DEResult, benjamini_hochberg, log2_fold_change, rank_genes
from vclib.metrics._evaluate import (
    CEILING_RULES,
    CELL_EVAL,
    DE_METRICS,
    REGISTRY,
    SCORING_DEFAULTS,
    Metric,
    check_metrics,
    evaluate,
    metric_table,
    score,
)
from vclib.metrics._files import Scorecard, evaluate_files, predict_context_mean
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
    midranks,
    mse,
    pearson,
    prediction_distances,
    rank_metric,
    top_expressed,
)
from vclib.metrics._observed import Observed, prepare
from vclib.metrics._summary import (
    CEILING,
    MIN_N,
    aggregate,
    beyond_ceiling,
    calibrate,
    ceiling,
    cluster_bootstrap,
    compare,
    group_rng,
    predict_control,
    to_noise_free,
    too_few,
    verdict,
)

__all__ = [
    "CEILING", "CEILING_RULES", "CELL_EVAL", "DEResult", "DE_METRICS", "MIN_N", "Metric", "Observed", "REGISTRY",
    "SCORING_DEFAULTS", "Scorecard", "aggregate", "benjamini_hochberg", "beyond_ceiling", "calibrate", "ceiling",
    "check_metrics", "cluster_bootstrap", "compare", "cosine", "de_direction", "de_overlap", "de_precision",
    "de_spearman", "discrimination_score", "distance_matrix", "evaluate", "evaluate_files", "group_rng",
    "hit_rate_at_k", "l2", "log2_fold_change", "mae", "metric_table", "midranks", "mse", "pearson", "predict_control",
    "predict_context_mean", "prediction_distances", "prepare", "rank_genes", "rank_metric", "score",
    "to_noise_free", "too_few", "top_expressed", "verdict",
]
