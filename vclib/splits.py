"""Honest splits: which conditions a model may train on and which it is tested on.

Every split is a tidy table with one row per (fold, context, perturbation) and columns ``split``, ``fold``,
``context``, ``perturbation``, ``role`` (``train``, ``test`` or ``excluded``) and ``n_seen_singles`` (for
combinations: how many of the double's singles are in training). Control conditions are always ``train``: a
lab has its control cells before it runs a screen. Tables save with ``to_csv`` and load with :func:`read`.

A split never lets a test condition's perturbed cells reach training: :func:`training_data` builds each
fold's training pseudobulk from training cells only (models fit their gene selection and PCA on it), and
:func:`check_leakage` fails loudly if a test condition appears among what a model was fitted on.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from vclib.schema import (
    COMBINATION_SEP,
    CONTEXT_KEY,
    CONTROL,
    PERTURBATION_KEY,
    VclibInputError,
    condition_id,
    targets,
)

COLUMNS = ["split", "fold", CONTEXT_KEY, PERTURBATION_KEY, "role", "n_seen_singles"]
FEW_SHOT_FRACTIONS = (0.0, 0.1, 0.25, 0.5)


def _conditions(data: ad.AnnData) -> pd.DataFrame:
    """Distinct (context, perturbation) of cells or a pseudobulk, sorted."""
    obs = data.obs[[CONTEXT_KEY, PERTURBATION_KEY]].astype(str).drop_duplicates()
    return obs.sort_values([CONTEXT_KEY, PERTURBATION_KEY]).reset_index(drop=True)


def _table(split: str, fold: str, conditions: pd.DataFrame, roles: np.ndarray, seen=None) -> pd.DataFrame:
    out = conditions.copy()
    out.insert(0, "fold", fold)
    out.insert(0, "split", split)
    out["role"] = roles
    out["n_seen_singles"] = np.nan if seen is None else seen
    return out


def _check_folds(table: pd.DataFrame) -> pd.DataFrame:
    for fold, group in table.groupby("fold", sort=False):
        if not (group["role"] == "test").any():
            raise VclibInputError(
                f"split {group['split'].iloc[0]!r} leaves fold {fold!r} without test conditions; use fewer folds "
                "or a dataset with more perturbations per context."
            )
    return table.reset_index(drop=True)


def unseen_perturbation(data: ad.AnnData, *, n_folds: int = 5, seed: int | None = 0) -> pd.DataFrame:
    """Within each context, perturbations are held out in ``n_folds`` folds.

    Fold ``k`` tests, in every context, the perturbations assigned to fold ``k`` there (assigned at random
    per context) and trains on everything else.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=10, n_genes=50, cells_per_condition=5)
    >>> split = vc.splits.unseen_perturbation(adata, n_folds=2)
    >>> sorted(split["fold"].unique())
    ['0', '1']
    """
    conditions = _conditions(data)
    rng = np.random.default_rng(seed)
    fold_of = np.full(len(conditions), -1)
    for _, rows in conditions.groupby(CONTEXT_KEY).groups.items():
        rows = np.array([r for r in rows if conditions.at[r, PERTURBATION_KEY] != CONTROL])
        fold_of[rows] = rng.permutation(np.arange(rows.size) % n_folds)
    tables = [_table("unseen_perturbation", str(k), conditions, np.where(fold_of == k, "test", "train"))
              for k in range(n_folds)]
    return _check_folds(pd.concat(tables))


def unseen_context(data: ad.AnnData, *, fraction: float = 0.0, seed: int | None = 0) -> pd.DataFrame:
    """Leave one context out: its perturbed conditions are tested, its control stays in training.

    With ``fraction > 0`` (few-shot), that fraction of the held-out context's perturbations is visible in
    training and the rest is tested.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=10, n_genes=50, cells_per_condition=5)
    >>> vc.splits.unseen_context(adata)["fold"].unique().tolist()
    ['C1', 'C2', 'C3']
    """
    if not 0 <= fraction < 1:
        raise VclibInputError(f"fraction must be in [0, 1), got {fraction}.")
    conditions = _conditions(data)
    contexts = sorted(conditions[CONTEXT_KEY].unique())
    if len(contexts) < 2:
        raise VclibInputError(f"an unseen-context split needs two or more contexts; the data has {contexts}.")
    rng = np.random.default_rng(seed)
    name = "unseen_context" if fraction == 0 else f"few_shot_{fraction:g}"
    tables = []
    for ctx in contexts:
        held = ((conditions[CONTEXT_KEY] == ctx) & (conditions[PERTURBATION_KEY] != CONTROL)).to_numpy()
        rows = np.flatnonzero(held)
        visible = rng.choice(rows, int(round(fraction * rows.size)), replace=False)
        roles = np.where(held, "test", "train")
        roles[visible] = "train"
        tables.append(_table(name, ctx, conditions, roles))
    return _check_folds(pd.concat(tables))


def few_shot_context(data: ad.AnnData, *, fractions=FEW_SHOT_FRACTIONS, seed: int | None = 0) -> pd.DataFrame:
    """Unseen-context splits at several coverages ``f`` of the target context (``f = 0`` is unseen context).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=20, n_genes=50, cells_per_condition=5)
    >>> vc.splits.few_shot_context(adata)["split"].unique().tolist()
    ['unseen_context', 'few_shot_0.1', 'few_shot_0.25', 'few_shot_0.5']
    """
    return pd.concat([unseen_context(data, fraction=f, seed=seed) for f in fractions], ignore_index=True)


def combinations(data: ad.AnnData, *, holdout_singles: float = 0.3, seed: int | None = 0) -> pd.DataFrame:
    """Hold out every double ``A+B``; label each by how many of its singles are seen in training (0, 1, 2).

    To obtain all three strata, a fraction ``holdout_singles`` of each context's singles is also kept out of
    training (role ``excluded``: neither trained on nor scored).

    References
    ----------
    Norman et al., Science 2019; Roohani et al. (GEARS), Nat Biotechnol 2024, combination splits.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=1, n_perturbations=12, n_combinations=8, n_genes=50)
    >>> split = vc.splits.combinations(adata)
    >>> sorted(split.loc[split["role"] == "test", "n_seen_singles"].unique().tolist()) != []
    True
    """
    conditions = _conditions(data)
    is_double = conditions[PERTURBATION_KEY].str.contains(COMBINATION_SEP, regex=False).to_numpy()
    if not is_double.any():
        raise VclibInputError("a combinations split needs perturbations written 'A+B'; the data has none.")
    rng = np.random.default_rng(seed)
    roles = np.where(is_double, "test", "train").astype(object)
    seen = np.full(len(conditions), np.nan)
    for rows in conditions.groupby(CONTEXT_KEY).groups.values():
        rows = np.asarray(rows)
        singles = rows[~is_double[rows] & (conditions.loc[rows, PERTURBATION_KEY] != CONTROL).to_numpy()]
        excluded = rng.choice(singles, int(round(holdout_singles * singles.size)), replace=False)
        roles[excluded] = "excluded"
        trained = set(conditions.loc[[r for r in singles if r not in set(excluded)], PERTURBATION_KEY])
        for r in rows[is_double[rows]]:
            seen[r] = sum(t in trained for t in targets(conditions.at[r, PERTURBATION_KEY]))
    return _check_folds(_table("combinations", "0", conditions, roles, seen))


SPLITS = {
    "unseen_perturbation": unseen_perturbation,
    "unseen_context": unseen_context,
    "few_shot_context": few_shot_context,
    "combinations": combinations,
}


def make(name: str, data: ad.AnnData, *, seed: int | None = 0, **options) -> pd.DataFrame:
    """Build a split by name (one of :data:`SPLITS`).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=10, n_genes=50, cells_per_condition=5)
    >>> vc.splits.make("unseen_context", adata)["split"].iloc[0]
    'unseen_context'
    """
    if name not in SPLITS:
        raise VclibInputError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}.")
    return SPLITS[name](data, seed=seed, **options)


def read(path: str | Path) -> pd.DataFrame:
    """Load a split table saved with ``to_csv`` (labels stay strings)."""
    table = pd.read_csv(path, dtype={"split": str, "fold": str, CONTEXT_KEY: str, PERTURBATION_KEY: str,
                                     "role": str})
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise VclibInputError(f"{str(path)!r} is not a split table: columns {missing} missing.")
    return table[COLUMNS]


def folds(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The (split, fold) pairs of a split table, in order."""
    return list(table[["split", "fold"]].drop_duplicates().itertuples(index=False, name=None))


def roles(table: pd.DataFrame, split: str, fold: str) -> dict[str, list[str]]:
    """Condition ids (``"context|perturbation"``) by role in one fold."""
    rows = table[(table["split"] == split) & (table["fold"] == fold)]
    return {role: [condition_id(c, p) for c, p in zip(g[CONTEXT_KEY], g[PERTURBATION_KEY], strict=True)]
            for role, g in rows.groupby("role")}


def training_data(pseudobulk: ad.AnnData, table: pd.DataFrame, split: str, fold: str) -> ad.AnnData:
    """The training pseudobulk of one fold: a new AnnData with only the training conditions.

    Built from the per-condition pseudobulk, so no test condition's cells enter it; models fit every
    gene selection and PCA on this object only.
    """
    train = roles(table, split, fold).get("train", [])
    missing = sorted(set(train) - set(pseudobulk.obs_names))
    if missing:
        raise VclibInputError(f"training conditions missing from the data: {missing[:5]}.")
    out = pseudobulk[train].copy()
    check_leakage(out.obs_names, table, split, fold)
    return out


def check_leakage(trained_on, table: pd.DataFrame, split: str, fold: str) -> None:
    """Fail loudly if any test condition of the fold is among the conditions a model was fitted on.

    Parameters
    ----------
    trained_on
        Condition ids the model saw (e.g. ``model.training_conditions_``).
    table, split, fold
        The split.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=10, n_genes=50, cells_per_condition=5)
    >>> split = vc.splits.unseen_context(adata)
    >>> vc.splits.check_leakage(["C1|control", "C2|G0001"], split, "unseen_context", "C1")
    """
    test = set(roles(table, split, fold).get("test", []))
    leaked = sorted(test & set(map(str, trained_on)))
    if leaked:
        raise VclibInputError(
            f"leakage in split {split!r} fold {fold!r}: {len(leaked)} test condition(s) reached training, e.g. "
            f"{', '.join(map(repr, leaked[:5]))}. Fit models (and any gene selection or PCA) on "
            "vc.splits.training_data(...) only."
        )
