"""Honest splits: which conditions a model may train on and which it is tested on.

Every split is a tidy table with one row per (fold, context, perturbation) and columns ``split``, ``fold``,
``context``, ``perturbation``, ``role`` (``train``, ``test`` or ``excluded``) and ``n_seen_singles`` (for
combinations: how many of the double's singles are in training). Control conditions are always ``train``: a
lab has its control cells before it runs a screen. Tables save with ``to_csv`` and load with :func:`read`.

A split never lets a test condition's perturbed cells reach training: :func:`training_data` builds each
fold's training pseudobulk from training cells only (models fit their gene selection and PCA on it), and
:func:`check_leakage` fails loudly if a test condition appears among what a model was fitted on.

A model that runs elsewhere (its own environment, its own language) gets each fold as files with :func:`export`
(the fold protocol) and answers with one predictions file per fold, which :class:`vclib.models.ExternalPredictions`
reads.
"""

from vclib.splits._export import export
from vclib.splits._tables import (
    COLUMNS,
    FEW_SHOT_FRACTIONS,
    SPLITS,
    applicable,
    check_leakage,
    combinations,
    few_shot_context,
    folds,
    make,
    read,
    roles,
    safe_name,
    training_data,
    unseen_context,
    unseen_perturbation,
)

__all__ = ["COLUMNS", "FEW_SHOT_FRACTIONS", "SPLITS", "applicable", "check_leakage", "combinations", "export",
           "few_shot_context", "folds", "make", "read", "roles", "safe_name", "training_data", "unseen_context",
           "unseen_perturbation"]
