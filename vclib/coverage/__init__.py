"""Context coverage: what was measured where, how far apart the contexts are, and how well responses transfer.

The questions, in the order notebook 01 asks them:

* What was measured? :func:`cell_counts`, :func:`summarize_contexts`, :func:`summarize_perturbations`,
  :func:`context_overlap` (Jaccard of perturbation sets), :func:`overview` (in words, including what a
  single-context dataset can and cannot show).
* How different are the contexts before any perturbation? :func:`control_distances` (E-distance in a shared PCA
  of control cells, correlation distance of control pseudobulks), :func:`edistance` (on arrays),
  :func:`distance_matrix`.
* Do responses transfer between contexts? :func:`reliability` (split-half), :func:`transferability` (same vs
  mismatched perturbation, raw and noise-corrected; cells or signatures), :func:`summarize_transfer`,
  :func:`true_transfer` (simulator ground truth).
* Does control-cell distance predict transfer? :func:`distance_vs_transfer`, :func:`rank_correlation`.
* What to measure next for a target context? :func:`target_coverage`, :func:`least_covered`,
  :func:`next_experiments`.

Every function returns a new table and leaves its inputs unchanged.
"""

from vclib.coverage._distances import control_distances, distance_matrix, edistance
from vclib.coverage._plan import least_covered, next_experiments, target_coverage
from vclib.coverage._tables import (
    cell_counts,
    context_overlap,
    overview,
    summarize_contexts,
    summarize_perturbations,
)
from vclib.coverage._transfer import (
    distance_vs_transfer,
    rank_correlation,
    reliability,
    summarize_transfer,
    transferability,
    true_transfer,
)

__all__ = [
    "cell_counts",
    "context_overlap",
    "control_distances",
    "distance_matrix",
    "distance_vs_transfer",
    "edistance",
    "least_covered",
    "next_experiments",
    "overview",
    "rank_correlation",
    "reliability",
    "summarize_contexts",
    "summarize_perturbations",
    "summarize_transfer",
    "target_coverage",
    "transferability",
    "true_transfer",
]
