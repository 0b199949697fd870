"""Split tables: the splits themselves, the training data of a fold and the leakage check."""

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
    SIGNATURE,
    NotApplicable,
    VclibInputError,
    condition_id,
    targets,
)

COLUMNS = ["split", "fold", CONTEXT_KEY, PERTURBATION_KEY, "role", "n_seen_singles"]
FEW_SHOT_FRACTIONS = (0.0, 0.1, 0.25, 0.5)


def _conditions(data: ad.AnnData) -> pd.DataFrame:
    """Distinct (context, perturbation) of cells or a pseudobulk, sorted."""
    missing = [k for k in (CONTEXT_KEY, PERTURBATION_KEY) if k not in data.obs]
    if missing:
        raise VclibInputError(f"obs has no column {missing}: splits need data in vclib's contract; load it with "
                              "vc.loaders.read(path, perturbation_key=..., context_key=..., control=...) first.")
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
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise VclibInputError(f"n_folds must be an integer of at least 2, got {n_folds!r}.")
    conditions = _conditions(data)
    rng = np.random.default_rng(seed)
    fold_of = np.full(len(conditions), -1)
    for _, rows in conditions.groupby(CONTEXT_KEY).groups.items():
        rows = np.array([r for r in rows if conditions.at[r, PERTURBATION_KEY] != CONTROL], dtype=int)
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
        raise NotApplicable(f"an unseen-context split needs two or more contexts; the data has {contexts}.")
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
    if not 0 <= holdout_singles < 1:
        raise VclibInputError(
            f"holdout_singles is the fraction of singles held out, in [0, 1); got {holdout_singles!r}.")
    conditions = _conditions(data)
    is_double = conditions[PERTURBATION_KEY].str.contains(COMBINATION_SEP, regex=False).to_numpy()
    if not is_double.any():
        raise NotApplicable("a combinations split needs perturbations written 'A+B'; the data has none.")
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


def _perturbations_per_context(conditions: pd.DataFrame) -> pd.Series:
    perturbed = conditions[conditions[PERTURBATION_KEY] != CONTROL]
    counts = perturbed.groupby(CONTEXT_KEY).size()
    return counts.reindex(sorted(conditions[CONTEXT_KEY].unique()), fill_value=0)


def applicable(data: ad.AnnData, names=tuple(SPLITS), *, options: dict | None = None) -> dict:
    """Which splits can apply to this data, with what options, and one sentence for each that cannot.

    * ``unseen_perturbation`` needs a context with at least 2 perturbations; its folds are reduced to the most
      perturbations any context has (noted).
    * ``unseen_context`` needs 2 or more contexts with perturbed cells.
    * ``few_shot_context`` needs that and, per fraction f, a context where f of its perturbations is at least
      one; fractions that show nothing anywhere are dropped (noted).
    * ``combinations`` needs perturbations written ``A+B``.

    Parameters
    ----------
    data
        Cells or a pseudobulk in the data contract.
    names
        The splits asked for.
    options
        Options per split name, as :func:`make` takes them.

    Returns
    -------
    ``{"splits": {name: options}, "skipped": [{"analysis", "reason"}], "notes": [{"analysis", "reason"}]}``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=1, n_perturbations=8, n_genes=50, cells_per_condition=5)
    >>> plan = vc.splits.applicable(adata, ["unseen_perturbation", "unseen_context"])
    >>> list(plan["splits"]), plan["skipped"][0]["reason"]
    (['unseen_perturbation'], 'one context (C1): there is no other context to transfer from')
    """
    options = options or {}
    out: dict = {"splits": {}, "skipped": [], "notes": []}
    if data.uns.get("vclib", {}).get("values") == SIGNATURE:
        out["skipped"] = [{"analysis": f"split {name}", "reason": "these are response signatures without cells: "
                           "a benchmark scores predicted against observed cells"} for name in names]
        return out
    conditions = _conditions(data)
    per_context = _perturbations_per_context(conditions)
    contexts = [c for c, n in per_context.items() if n > 0]

    def skip(name, reason):
        out["skipped"].append({"analysis": f"split {name}", "reason": reason})

    for name in names:
        if name not in SPLITS:
            raise VclibInputError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}.")
        own = dict(options.get(name, {}))
        most = int(per_context.max()) if len(per_context) else 0
        if name == "unseen_perturbation":
            if most < 2:
                skip(name, "one perturbation per context: nothing to hold out within a context")
                continue
            n_folds = own.get("n_folds", 5)
            if isinstance(n_folds, int | np.integer) and not isinstance(n_folds, bool) and n_folds > most:
                out["notes"].append({"analysis": f"split {name}", "reason": f"{n_folds} folds reduced to {most}: "
                                     f"no context has more than {most} perturbations"})
                own["n_folds"] = most
        elif name in ("unseen_context", "few_shot_context"):
            if len(contexts) < 2:
                skip(name, f"one context ({', '.join(per_context.index) or 'none'}): there is no other context to "
                     "transfer from" if len(per_context) < 2 else
                     f"only one context ({contexts[0] if contexts else 'none'}) has perturbed cells")
                continue
            if name == "few_shot_context":
                fractions = list(own.get("fractions", FEW_SHOT_FRACTIONS))
                shown = [f for f in fractions if f == 0 or any(int(round(f * n)) >= 1 for n in per_context)]
                dropped = [f for f in fractions if f not in shown]
                if not any(f > 0 for f in shown):
                    skip(name, f"too few perturbations per context (at most {most}) for any visible fraction "
                         f"{', '.join(f'{f:g}' for f in dropped)} to show one")
                    continue
                if dropped:
                    out["notes"].append({"analysis": f"split {name}", "reason": "fraction(s) "
                                         f"{', '.join(f'{f:g}' for f in dropped)} dropped: they show no perturbation "
                                         f"of any context (at most {most} per context)"})
                # fraction 0 is the unseen-context split itself: run it once when both are asked for
                own["fractions"] = [f for f in shown if f > 0] if "unseen_context" in names else shown
        elif name == "combinations":
            if not conditions[PERTURBATION_KEY].str.contains(COMBINATION_SEP, regex=False).any():
                skip(name, "no combination perturbations (written 'A+B') in the data")
                continue
        out["splits"][name] = own
    return out


def safe_name(text: str) -> str:
    """A file-name-safe, unambiguous version of a split/fold label (context names can hold '/', ' ', '+').

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``~XX`` (their hex code), so two labels
    never map to the same name.

    Examples
    --------
    >>> safe_name("unseen_context__CD14+ Monocytes")
    'unseen_context__CD14~2B~20Monocytes'
    """
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else f"~{ord(ch):02X}" for ch in str(text))


def read(path: str | Path) -> pd.DataFrame:
    """Load a split table saved with ``to_csv`` (labels stay strings)."""
    table = pd.read_csv(path, dtype={"split": str, "fold": str, CONTEXT_KEY: str, PERTURBATION_KEY: str,
                                     "role": str})
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise VclibInputError(f"{str(path)!r} is not a split table: columns {missing} missing.")
    return table[COLUMNS + (["seed"] if "seed" in table.columns else [])]


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
