"""Failure characterisation: where and why predictions fail, and where a model adds value.

Everything here reads the benchmark's per-condition results (the tables notebook 02 writes) and joins them with
what is known about each test condition:

* :func:`observed_effects`: per condition, its observed effect size (L2 norm of the delta), number of DE genes,
  cells, and for combinations the observed non-additivity.
* :func:`split_covariates`: per test condition of each split fold, the distance of its context to the nearest
  training context (from control cells), the number of training contexts that measured its perturbation, and
  for doubles the number of seen singles.
* :func:`condition_table`: the scores of every model joined with those covariates (and the reliability).
* :func:`regime_map`: model − baseline with paired bootstrap CIs per covariate stratum (wins / ties / loses).
* :func:`error_drivers`: which covariates explain the error: rank correlations and a standardised linear
  regression, each with bootstrap CIs.
* :func:`hit_rate_curves`, :func:`mode_collapse`, :func:`worst_conditions`: the screening view, the spread of
  predictions against the spread of observations, and the gallery of the worst failures.
* :func:`predicted_delta` and :func:`scored_against`: a saved prediction and what it was scored against (the
  observed delta, or for the noise ceiling the other half of the cells), for the scatter plots.
* :func:`read_results` reads what notebooks 01 and 02 wrote; :func:`describe_drivers` says it in words.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from vclib import pseudobulk as pbk
from vclib.benchmark import SCORED_AGAINST, load_predictions, read_scores
from vclib.metrics import CEILING, MIN_N, REGISTRY, Observed, compare, midranks, prepare, too_few
from vclib.metrics._de import DEResult
from vclib.schema import CONTEXT_KEY, CONTROL, PERTURBATION_KEY, SIGNATURE, VclibInputError, condition_id, targets

KEYS = ["split", "fold", "seed", CONTEXT_KEY, PERTURBATION_KEY]
NOTHING_SCORED = "no predictions: the benchmark scored nothing on this data (see notebook 02's skipped analyses)"
EFFECT_COLUMNS = [CONTEXT_KEY, PERTURBATION_KEY, "n_cells", "effect_size", "n_de_genes", "non_additivity",
                  "non_additivity_raw", "non_additivity_noise", "non_additivity_within_noise"]
COVARIATES = ["distance_to_training", "n_training_contexts", "effect_size", "n_de_genes", "n_cells",
              "reliability", "n_seen_singles", "non_additivity"]


def _non_additivity(deltas: ad.AnnData, names: list[str]) -> np.ndarray:
    """Per condition, ``delta_AB − Σ delta_single`` (NaN rows where it is not a double with all singles measured)."""
    X = np.asarray(deltas.X, dtype=np.float64)
    row = {n: i for i, n in enumerate(deltas.obs_names)}
    out = np.full((len(names), X.shape[1]), np.nan)
    for i, name in enumerate(names):
        context, pert = name.split("|", 1)
        singles = [condition_id(context, t) for t in targets(pert)]
        if len(singles) > 1 and name in row and all(s in row for s in singles):
            out[i] = X[row[name]] - sum(X[row[s]] for s in singles)
    return out


def observed_effects(adata: ad.AnnData | Observed, *, de: DEResult | None = None, fdr: float = 0.05,
                     n_splits: int = 5, seed: int | None = 0) -> pd.DataFrame:
    """What was observed for every perturbed condition: effect size, DE genes, cells, non-additivity.

    Non-additivity ``‖delta_AB − delta_A − delta_B‖²`` carries the measurement noise of four pseudobulks (the
    double, both singles, the control), which inflates it even for a perfectly additive pair. Its noise term is
    estimated from split halves: with each condition's cells (and the control's) halved, the same expression
    ``N_h`` on half h, ``‖N_0 − N_1‖² / 4`` has the expectation of the noise in ``‖N‖²`` (two halves differ by twice
    a half's noise variance, a half has twice the whole's). Averaged over ``n_splits`` random splits, it is
    subtracted: ``non_additivity`` is the noise-corrected value (unbiased, so it can be negative); it is flagged
    ``within noise`` when the raw value exceeds the noise estimate by less than twice the noise estimate's spread
    across splits.

    Parameters
    ----------
    adata
        Observed cells in the data contract, or a prepared :class:`vclib.metrics.Observed` (its DE and halves
        are reused).
    de
        :func:`vclib.metrics.rank_genes` of ``adata`` (default: computed, or the Observed's).
    fdr
        FDR threshold of a DE gene.
    n_splits, seed
        Random half splits of the non-additivity noise estimate (seeds ``seed``, ``seed + 1``, ...).

    Returns
    -------
    One row per perturbed condition (index ``"context|perturbation"``): ``context``, ``perturbation``,
    ``n_cells``, ``effect_size`` (L2 norm of the delta), ``n_de_genes``, and for a combination whose singles were
    measured in its context ``non_additivity`` (noise-corrected ``‖delta_AB − Σ delta_single‖²``),
    ``non_additivity_raw``, ``non_additivity_noise`` and ``non_additivity_within_noise``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_combinations=2, n_genes=60)
    >>> effects = vc.failures.observed_effects(adata)
    >>> effects.columns.tolist()[:6]
    ['context', 'perturbation', 'n_cells', 'effect_size', 'n_de_genes', 'non_additivity']
    """
    obs = prepare(adata, de=de) if not isinstance(adata, Observed) else adata
    if obs.not_applicable:
        out = pd.DataFrame(columns=EFFECT_COLUMNS)
        out.attrs["skipped"] = [{"analysis": "observed effects", "reason": obs.not_applicable}]
        return out
    de = obs.de if de is None else de
    deltas = obs.deltas
    out = deltas.obs[[CONTEXT_KEY, PERTURBATION_KEY, "n_cells"]].copy()
    out[CONTEXT_KEY] = out[CONTEXT_KEY].astype(str)
    out["effect_size"] = np.linalg.norm(np.asarray(deltas.X, dtype=np.float64), axis=1)
    n_de = pd.Series(de.significant(fdr).sum(axis=1), index=de.conditions.index)
    out["n_de_genes"] = n_de.reindex(out.index).to_numpy()
    names = list(out.index)
    raw = (_non_additivity(deltas, names) ** 2).sum(axis=1)
    raw[~np.isfinite(_non_additivity(deltas, names)).all(axis=1)] = np.nan
    noise = np.full((n_splits, len(names)), np.nan)
    if np.isfinite(raw).any():
        for k in range(n_splits):
            halves = obs.halves(None if seed is None else seed + k)
            parts = []
            for h in halves:
                ok = set(h.pseudobulk.obs.loc[h.pseudobulk.obs["is_control"], CONTEXT_KEY].astype(str))
                keep = h.pseudobulk.obs[CONTEXT_KEY].astype(str).isin(ok).to_numpy()
                parts.append(_non_additivity(pbk.deltas(h.pseudobulk[keep]), names))
            noise[k] = ((parts[0] - parts[1]) ** 2).sum(axis=1) / 4
    with np.errstate(invalid="ignore"):
        noise_mean = np.where(np.isfinite(noise).all(axis=0), noise.mean(axis=0), np.nan)
        spread = noise.std(axis=0, ddof=1) if n_splits > 1 else np.zeros(len(names))
    out["non_additivity"] = raw - noise_mean
    out["non_additivity_raw"] = raw
    out["non_additivity_noise"] = noise_mean
    within = pd.Series(raw - noise_mean < 2 * spread, index=out.index, dtype=object)
    out["non_additivity_within_noise"] = within.where(np.isfinite(raw - noise_mean), None)
    return out


def split_covariates(splits: pd.DataFrame, distances: pd.DataFrame | None = None, *,
                     distance: str = "edistance") -> pd.DataFrame:
    """Per test condition of each split fold: how far it is from what the model was trained on.

    Parameters
    ----------
    splits
        Split tables (:mod:`vclib.splits`), several concatenated.
    distances
        Context pairs with a distance column (:func:`vclib.coverage.control_distances`); a context's distance to
        itself is 0.
    distance
        Which distance column to use.

    Returns
    -------
    One row per test condition with ``split``, ``fold``, ``context``, ``perturbation``, ``distance_to_training``
    (distance of its context to the nearest context with training perturbations; 0 when its own context has
    some), ``nearest_training_context``, ``n_training_contexts`` (training contexts that measured its
    perturbation, or for a double all of its singles), and ``n_seen_singles``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=8, n_genes=50, cells_per_condition=10)
    >>> cov = vc.failures.split_covariates(vc.splits.unseen_context(adata))
    >>> int(cov["n_training_contexts"].max()) <= 2
    True
    """
    lookup = {}
    if distances is not None:
        for a, b, d in distances[["context_a", "context_b", distance]].itertuples(index=False):
            lookup[(str(a), str(b))] = lookup[(str(b), str(a))] = d
    rows = []
    splits = splits if "seed" in splits else splits.assign(seed=0)
    for (split, fold, seed), table in splits.groupby(["split", "fold", "seed"], sort=False):
        train = table[(table["role"] == "train") & (table[PERTURBATION_KEY] != CONTROL)]
        trained_contexts = sorted(set(train[CONTEXT_KEY]))
        measured = train.groupby(PERTURBATION_KEY)[CONTEXT_KEY].apply(set).to_dict()
        for row in table[table["role"] == "test"].itertuples(index=False):
            ctx, pert = row.context, row.perturbation
            if ctx in trained_contexts:
                near, dist = ctx, 0.0
            else:
                options = [(lookup.get((ctx, c), np.nan), c) for c in trained_contexts]
                options = [o for o in options if np.isfinite(o[0])]
                dist, near = min(options) if options else (np.nan, None)
            contexts = measured.get(pert, set())
            if "+" in pert:  # a double counts the contexts where all of its singles were trained
                sets = [measured.get(t, set()) for t in targets(pert)]
                contexts = set.intersection(*sets) if sets else set()
            rows.append({"split": split, "fold": str(fold), "seed": int(seed), CONTEXT_KEY: ctx, PERTURBATION_KEY: pert,
                         "distance_to_training": dist, "nearest_training_context": near,
                         "n_training_contexts": len(contexts),
                         "n_seen_singles": row.n_seen_singles})
    return pd.DataFrame(rows, columns=[*KEYS, "distance_to_training", "nearest_training_context",
                                       "n_training_contexts", "n_seen_singles"])


def condition_table(
    scores: pd.DataFrame,
    covariates: pd.DataFrame,
    effects: pd.DataFrame,
    *,
    reliability: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every model's score of every test condition joined with the condition's covariates.

    Parameters
    ----------
    scores
        :func:`vclib.benchmark.run` output (notebook 02's ``benchmark_scores.csv``).
    covariates
        :func:`split_covariates` output.
    effects
        :func:`observed_effects` output.
    reliability
        Per-condition split-half reliability (:func:`vclib.coverage.reliability`), joined on context and
        perturbation from its ``reliability`` column.

    Returns
    -------
    The scores (rows with perturbation ``"*"``, the per-context screening metrics, left out) with the columns of
    :data:`COVARIATES` added.
    """
    table = scores[scores[PERTURBATION_KEY] != "*"].copy()
    table["fold"] = table["fold"].astype(str)
    covariates = covariates.assign(fold=covariates["fold"].astype(str))
    keys = [k for k in KEYS if k in table and k in covariates]
    if "seed" in keys:
        table["seed"] = table["seed"].astype(int)
        covariates = covariates.assign(seed=covariates["seed"].astype(int))
    table = table.merge(covariates.drop(columns=[c for c in covariates if c in table and c not in keys]),
                        on=keys, how="left")
    effect_cols = [c for c in ["n_cells", "effect_size", "n_de_genes", "non_additivity",
                               "non_additivity_within_noise"] if c in effects]
    table = table.merge(effects[[CONTEXT_KEY, PERTURBATION_KEY, *effect_cols]], on=[CONTEXT_KEY, PERTURBATION_KEY],
                        how="left")
    if reliability is not None:
        rel = reliability.reset_index(drop=True)[[CONTEXT_KEY, PERTURBATION_KEY, "reliability"]]
        table = table.merge(rel.astype({CONTEXT_KEY: str}), on=[CONTEXT_KEY, PERTURBATION_KEY], how="left")
    else:
        table["reliability"] = np.nan
    return table


def _strata(values: pd.Series, bins: int) -> tuple[pd.Series, list[str]]:
    """Label each value by its quantile bin (few distinct values keep their own label), and the labels in
    increasing order. A bin is labelled by the smallest and largest value it holds, as a reader writes numbers:
    integers as integers (``0–2``, ``3``), others to 3 significant digits (``2.37–2.77``), never a quantile edge
    such as ``(-0.001, 2.0]`` or ``(2.3720000000000003, 2.773]``.

    Examples
    --------
    >>> import pandas as pd
    >>> labels, order = _strata(pd.Series([0, 1, 2, 2, 3, 3, 4, None]), bins=3)
    >>> order, labels.tolist()
    (['0–1', '2', '3–4', 'n/a'], ['0–1', '0–1', '2', '2', '3–4', '3–4', '3–4', 'n/a'])
    >>> _strata(pd.Series([2.3720000000000003, 2.5, 2.773, 3.1, 5.029, 43.677]), bins=3)[1]
    ['2.37–2.5', '2.77–3.1', '5.03–43.7']
    """
    distinct = np.sort(values.dropna().unique())
    if len(distinct) <= bins:
        labels = values.map(lambda v: "n/a" if pd.isna(v) else _number(v))
        order = [_number(v) for v in distinct]
    else:
        codes = pd.qcut(values, q=bins, duplicates="drop", labels=False)
        names = {}
        for code in sorted(codes.dropna().unique()):
            inside = values[codes == code]
            lo, hi = _number(inside.min()), _number(inside.max())
            names[code] = lo if lo == hi else f"{lo}–{hi}"
        labels = codes.map(names)
        order = list(dict.fromkeys(names.values()))
    labels = labels.where(values.notna(), "n/a").astype(str)
    return labels, order + (["n/a"] if values.isna().any() else [])


def _number(value: float) -> str:
    """An integer as an integer, anything else to 3 significant digits, never in scientific notation."""
    value = float(value)
    return str(int(value)) if value.is_integer() else np.format_float_positional(value, precision=3, fractional=False,
                                                                               trim="-")


def regime_map(
    table: pd.DataFrame,
    *,
    model: str,
    baseline: str,
    metric: str,
    covariate: str,
    bins: int = 3,
    n_boot: int = 1000,
    seed: int | None = 0,
    min_n: int = MIN_N,
) -> pd.DataFrame:
    """Where does ``model`` beat ``baseline``? Paired differences with bootstrap CIs per covariate stratum.

    Parameters
    ----------
    table
        :func:`condition_table` output.
    model, baseline
        The two models compared on the same conditions.
    metric
        The metric.
    covariate
        Column to stratify by (quantile bins, or its own values when it has at most ``bins`` of them).
    bins, n_boot, seed
        Strata, bootstrap resamples and seed.
    min_n
        Fewest perturbations a verdict rests on; a stratum with fewer gets ``"too few conditions (n = …)"``.

    Returns
    -------
    One row per (split, stratum), strata in increasing order of the covariate and labelled by the range of values
    they hold (``0–2``, ``2.37–2.77``): ``model``, ``baseline``, ``difference`` (model − baseline), ``ci_low``,
    ``ci_high``, ``n`` and ``verdict`` (``wins`` / ``ties`` / ``loses`` in the metric's good direction, or too
    few conditions). Empty, with the reason in ``attrs["skipped"]``, when ``model`` or ``baseline`` was not scored.
    """
    empty = pd.DataFrame(columns=["model", "baseline", "split", "metric", "covariate", "stratum", "difference",
                                  "ci_low", "ci_high", "n", "n_pairs", "verdict"])
    absent = [name for name in (model, baseline) if name not in set(table["model"])]
    if absent:  # e.g. a model that could not be fitted on any fold of this data: say so, do not fail
        empty.attrs["skipped"] = [{"analysis": f"regime map by {covariate}", "reason": (
            f"{' and '.join(absent)} not scored; models scored: {', '.join(sorted(set(table['model']))) or 'none'}")}]
        return empty
    rows = table[(table["metric"] == metric) & table["model"].isin([model, baseline])].copy()
    if covariate not in rows:
        raise VclibInputError(f"no covariate {covariate!r}; covariates: {[c for c in COVARIATES if c in rows]}.")
    rows["stratum"], order = _strata(rows[covariate], bins)
    result = compare(rows, baseline=baseline, by=("split", "metric", "stratum"), n_boot=n_boot, seed=seed,
                     min_n=min_n)
    if result.empty:
        return empty
    result["verdict"] = result["better"].map(lambda b: {"yes": "wins", "no": "loses", "tie": "ties"}.get(b, b))
    result.insert(1, "baseline", baseline)
    result.insert(4, "covariate", covariate)
    position = result["stratum"].map({s: i for i, s in enumerate(order)})
    result = result.assign(_order=position).sort_values(["model", "split", "metric", "_order"], kind="stable")
    return result.drop(columns=["better", "_order"]).reset_index(drop=True)


def error_drivers(
    table: pd.DataFrame,
    *,
    model: str,
    metric: str,
    covariates: list[str] | None = None,
    n_boot: int = 500,
    seed: int | None = 0,
    min_n: int = MIN_N,
) -> pd.DataFrame:
    """Which covariates explain a model's per-condition score? Spearman correlations and a standardised linear
    regression (all covariates together), each with a bootstrap 95% CI over conditions.

    Parameters
    ----------
    table
        :func:`condition_table` output.
    model, metric
        Whose score, on which metric.
    covariates
        Columns to use (default: those of :data:`COVARIATES` that vary).
    n_boot, seed
        Bootstrap resamples and seed.
    min_n
        Fewest conditions to estimate anything from; below it every covariate's row says so in ``note``.

    Returns
    -------
    One row per covariate: ``spearman`` with ``spearman_low`` / ``spearman_high``, and ``coefficient`` (change
    of the score per standard deviation of the covariate, others held fixed) with ``coef_low`` / ``coef_high``;
    ``n`` conditions used and ``note`` (``"too few conditions (n = …)"`` where nothing was estimated).
    """
    rows = table[(table["model"] == model) & (table["metric"] == metric)]
    if rows.empty:
        raise VclibInputError(f"no scores for model {model!r} and metric {metric!r}.")
    candidates = covariates or COVARIATES
    usable = [c for c in candidates if c in rows and rows[c].notna().mean() > 0.9 and rows[c].nunique() > 1]
    data = rows[["value", *usable]].dropna()
    columns = ["covariate", "spearman", "spearman_low", "spearman_high", "coefficient", "coef_low", "coef_high",
               "n", "note"]
    if not usable:
        return pd.DataFrame(columns=columns)
    if len(data) < max(min_n, 3):
        return pd.DataFrame({"covariate": usable, **{c: np.nan for c in columns[1:7]}, "n": len(data),
                             "note": too_few(len(data))}, columns=columns)
    y = data["value"].to_numpy(dtype=float)
    X = data[usable].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)

    def fit(idx):
        Xi, yi = X[idx], y[idx]
        sd = Xi.std(axis=0)
        Z = (Xi - Xi.mean(axis=0)) / np.where(sd > 0, sd, np.nan)
        Z = np.nan_to_num(Z)
        coef = np.linalg.lstsq(np.column_stack([np.ones(len(yi)), Z]), yi, rcond=None)[0][1:]
        # Spearman = Pearson of mid-ranks: a scipy.stats.spearmanr call per covariate and resample made fits 3.5x slower
        ry = midranks(yi)
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = [np.corrcoef(midranks(Xi[:, j]), ry)[0, 1] if np.ptp(Xi[:, j]) > 0 else np.nan
                   for j in range(X.shape[1])]
        return np.array(rho), coef

    rho, coef = fit(np.arange(len(y)))
    boots = [fit(rng.integers(0, len(y), len(y))) for _ in range(n_boot)]
    rho_b = np.array([b[0] for b in boots])
    coef_b = np.array([b[1] for b in boots])
    return pd.DataFrame({
        "covariate": usable, "spearman": rho,
        "spearman_low": np.nanquantile(rho_b, 0.025, axis=0), "spearman_high": np.nanquantile(rho_b, 0.975, axis=0),
        "coefficient": coef, "coef_low": np.quantile(coef_b, 0.025, axis=0),
        "coef_high": np.quantile(coef_b, 0.975, axis=0), "n": len(y), "note": "",
    })


def drivers_by_split(table: pd.DataFrame, *, models: list[str], metric: str, **options) -> pd.DataFrame:
    """:func:`error_drivers` for each split and model of ``models`` present in ``table``, one table with ``split``
    and ``model`` columns (empty, with the reason in ``attrs["skipped"]``, when nothing was scored).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"model": "m", "metric": "mse", "split": "s", "value": range(8),
    ...                   "effect_size": [0, 1, 2, 3, 4, 5, 6, 8]})
    >>> out = drivers_by_split(t, models=["m", "absent"], metric="mse")
    >>> out[["split", "model", "spearman"]].round(2).values.tolist()
    [['s', 'm', 1.0]]
    """
    parts = [error_drivers(part, model=model, metric=metric, **options).assign(split=split, model=model)
             for split, part in table.groupby("split", sort=True)
             for model in models if ((part["model"] == model) & (part["metric"] == metric)).any()]
    if parts:
        return pd.concat(parts, ignore_index=True)
    out = pd.DataFrame(columns=["covariate", "spearman", "spearman_low", "spearman_high", "coefficient", "coef_low",
                                "coef_high", "n", "note", "split", "model"])
    out.attrs["skipped"] = [{"analysis": "error drivers",
                             "reason": f"no scores of {', '.join(models) or 'any model'} on {metric}"}]
    return out


def hit_rate_curves(predictions: ad.AnnData, effects: pd.DataFrame, *, min_de: int = 10,
                    k_max: int | None = None) -> pd.DataFrame:
    """Screening view: rank each context's test perturbations by predicted effect size (L2 norm of the predicted
    delta); at each k, the fraction of the top k that are real hits (at least ``min_de`` observed DE genes).

    Parameters
    ----------
    predictions
        :func:`vclib.benchmark.load_predictions` output (predicted deltas with model/split/fold/seed).
    effects
        :func:`observed_effects` output (for the hits).
    min_de, k_max
        DE genes that make a hit; largest k (default: all).

    Returns
    -------
    One row per (model, split, k): ``hit_rate`` averaged over folds, seeds and contexts, ``n`` (rankings
    averaged), and ``best_possible`` (all hits first) and ``chance`` (the hit fraction) for reference.
    """
    hits = (effects.set_index([CONTEXT_KEY, PERTURBATION_KEY])["n_de_genes"] >= min_de)
    obs = predictions.obs.astype({CONTEXT_KEY: str, PERTURBATION_KEY: str})
    effect = np.linalg.norm(np.asarray(predictions.X, dtype=np.float64), axis=1)
    rows = []
    for (model, split, *_), group in obs.groupby(["model", "split", "fold", "seed", CONTEXT_KEY], sort=False,
                                                 observed=True):
        idx = predictions.obs_names.get_indexer(group.index)
        is_hit = hits.reindex(list(zip(group[CONTEXT_KEY], group[PERTURBATION_KEY], strict=True))).fillna(False)
        is_hit = is_hit.to_numpy(dtype=bool)
        if len(group) < 2 or not is_hit.any():  # one perturbation or no hit: a ranking says nothing
            continue
        order = np.argsort(-effect[idx], kind="stable")
        n = len(order) if k_max is None else min(k_max, len(order))
        k = np.arange(1, n + 1)
        rows.append(pd.DataFrame({"model": model, "split": split, "k": k,
                                  "hit_rate": np.cumsum(is_hit[order])[:n] / k,
                                  "best_possible": np.minimum(k, is_hit.sum()) / k,
                                  "chance": is_hit.mean()}))
    if not rows:
        out = pd.DataFrame(columns=["model", "split", "k", "hit_rate", "best_possible", "chance", "n"])
        n_hits = int(hits.sum())
        out.attrs["skipped"] = [{"analysis": "hit-rate curves", "reason": (
            NOTHING_SCORED if predictions.n_obs == 0 else
            f"no real hit among the test perturbations (none has >= {min_de} observed DE genes)" if n_hits == 0 else
            "every context has a single test perturbation per fold: there is nothing to rank")}]
        return out
    curves = pd.concat(rows)
    return curves.groupby(["model", "split", "k"], as_index=False).agg(
        hit_rate=("hit_rate", "mean"), best_possible=("best_possible", "mean"), chance=("chance", "mean"),
        n=("hit_rate", "size"))


def mode_collapse(predictions: ad.AnnData, observed: ad.AnnData) -> pd.DataFrame:
    """Does a model predict nearly the same delta for every perturbation?

    Per (model, split, fold, seed, context): the spread of the predicted deltas across perturbations (total
    variance around their mean) divided by the spread of the observed deltas of the same conditions. Near 0 is
    mode collapse; near 1 a model whose predictions vary as much as the data.

    Parameters
    ----------
    predictions
        :func:`vclib.benchmark.load_predictions` output.
    observed
        Observed deltas (:func:`vclib.pseudobulk.deltas`), rows named ``"context|perturbation"``.

    Returns
    -------
    One row per group with ``predicted_spread``, ``observed_spread``, ``spread_ratio`` and ``n``.
    """
    obs = predictions.obs.astype({CONTEXT_KEY: str, PERTURBATION_KEY: str})
    rows = []
    for key, group in obs.groupby(["model", "split", "fold", "seed", CONTEXT_KEY], sort=False, observed=True):
        if len(group) < 2:
            continue
        P = np.asarray(predictions[group.index].X, dtype=np.float64)
        names = [condition_id(c, p) for c, p in zip(group[CONTEXT_KEY], group[PERTURBATION_KEY], strict=True)]
        O = np.asarray(observed[names].X, dtype=np.float64)  # noqa: E741
        spread_p = ((P - P.mean(axis=0)) ** 2).sum(axis=1).mean()
        spread_o = ((O - O.mean(axis=0)) ** 2).sum(axis=1).mean()
        rows.append(dict(zip(["model", "split", "fold", "seed", CONTEXT_KEY], key, strict=True),
                         predicted_spread=spread_p, observed_spread=spread_o,
                         spread_ratio=spread_p / spread_o if spread_o > 0 else np.nan, n=len(group)))
    out = pd.DataFrame(rows, columns=["model", "split", "fold", "seed", CONTEXT_KEY, "predicted_spread",
                                      "observed_spread", "spread_ratio", "n"])
    if out.empty:
        out.attrs["skipped"] = [{"analysis": "mode collapse", "reason": NOTHING_SCORED if predictions.n_obs == 0 else
                                 "every context has a single test perturbation per fold: there is no spread to "
                                 "compare"}]
    return out


def worst_conditions(table: pd.DataFrame, *, model: str, metric: str, n: int = 6) -> pd.DataFrame:
    """The ``n`` test conditions where ``model`` scores worst on ``metric`` (for the gallery)."""
    rows = table[(table["model"] == model) & (table["metric"] == metric)].dropna(subset=["value"])
    higher = REGISTRY[metric].higher_is_better if metric in REGISTRY else True
    return rows.sort_values("value", ascending=higher).head(n).reset_index(drop=True)


@dataclass
class BenchmarkResults:
    """The files notebooks 01 and 02 wrote, read back for notebook 03 (nothing is recomputed)."""

    scores: pd.DataFrame
    splits: pd.DataFrame
    effects: pd.DataFrame
    predictions: ad.AnnData
    observed: ad.AnnData  # observed deltas, rows "context|perturbation"
    distances: pd.DataFrame | None
    reliability: pd.DataFrame | None
    identical: pd.DataFrame | None = None  # models with identical predictions per split (notebook 02)


def read_results(results_dir: str | Path) -> BenchmarkResults:
    """Read the tables of notebooks 01 and 02 from a results folder.

    Needs ``benchmark_scores.csv``, ``splits.csv``, ``observed_effects.csv``, ``benchmark/`` (notebook 02) and
    ``pseudobulk.h5ad`` (notebook 01); uses ``context_distances.csv`` and ``reliability.csv`` (notebook 01)
    when present.
    """
    results_dir = Path(results_dir)
    needed = {"benchmark_scores.csv": "02", "splits.csv": "02", "observed_effects.csv": "02",
              "pseudobulk.h5ad": "01"}
    missing = [f"{name} (notebook {nb})" for name, nb in needed.items() if not (results_dir / name).exists()]
    if missing:
        raise VclibInputError(
            f"{str(results_dir)!r} lacks {', '.join(missing)}: run notebooks 01 and 02 with the same RESULTS_DIR "
            "first (`vclib run` does all three in order)."
        )
    dtypes = {"fold": str, "split": str, CONTEXT_KEY: str, PERTURBATION_KEY: str}
    optional = {name: pd.read_csv(results_dir / name) if (results_dir / name).exists() else None
                for name in ("context_distances.csv", "reliability.csv", "benchmark/identical_models.csv")}
    pseudobulk = ad.read_h5ad(results_dir / "pseudobulk.h5ad")
    manifest = results_dir / "benchmark" / "manifest.json"
    described = {"notebook 01 (pseudobulk.h5ad)": pseudobulk.uns.get("vclib", {}).get("fingerprint"),
                 "notebook 02 (benchmark/manifest.json)": json.loads(manifest.read_text()).get("fingerprint")
                 if manifest.exists() else None}
    if len({v for v in described.values() if v}) > 1:
        raise VclibInputError(
            f"{str(results_dir)!r} mixes results of different data: "
            + ", ".join(f"{k} describes data {v}" for k, v in described.items())
            + ". Re-run notebooks 01 and 02 on the same dataset into a fresh RESULTS_DIR."
        )
    return BenchmarkResults(
        scores=read_scores(results_dir / "benchmark_scores.csv"),
        splits=pd.read_csv(results_dir / "splits.csv", dtype=dtypes),
        effects=pd.read_csv(results_dir / "observed_effects.csv", index_col=0, dtype=dtypes),
        predictions=load_predictions(results_dir / "benchmark"),
        # response signatures are responses already: no control to subtract
        observed=pseudobulk if pseudobulk.uns.get("vclib", {}).get("values") == SIGNATURE else pbk.deltas(pseudobulk),
        distances=optional["context_distances.csv"],
        reliability=optional["reliability.csv"],
        identical=optional["benchmark/identical_models.csv"],
    )


def describe_drivers(drivers: pd.DataFrame, *, model: str, metric: str) -> list[str]:
    """Plain sentences for :func:`error_drivers`: which covariates go with a better or worse score, and which
    show no relation (95% CI of the rank correlation includes 0)."""
    higher = REGISTRY[metric].higher_is_better if metric in REGISTRY else True
    sentences = []
    for row in drivers.itertuples(index=False):
        if getattr(row, "note", ""):
            sentences.append(f"{model}: {row.covariate} vs {metric}: {row.note}, no estimate.")
            continue
        ci = f"Spearman {row.spearman:+.2f} [{row.spearman_low:+.2f}, {row.spearman_high:+.2f}], n = {row.n}"
        if row.spearman_low <= 0 <= row.spearman_high or not np.isfinite(row.spearman):
            sentences.append(f"{model}: no clear relation between {row.covariate} and {metric} ({ci}).")
            continue
        worse = (row.spearman > 0) != higher
        sentences.append(f"{model}: {metric} gets {'worse' if worse else 'better'} as {row.covariate} grows ({ci}).")
    return sentences


def _prediction_row(predictions: ad.AnnData, *, model: str, split: str, fold, context: str,
                    perturbation: str) -> str | None:
    """The name of the saved prediction of one condition, or None."""
    obs = predictions.obs
    hit = obs[(obs["model"] == model) & (obs["split"] == split) & (obs["fold"].astype(str) == str(fold))
              & (obs[CONTEXT_KEY].astype(str) == context) & (obs[PERTURBATION_KEY].astype(str) == perturbation)]
    return None if hit.empty else hit.index[0]


def predicted_delta(predictions: ad.AnnData, *, model: str, split: str, fold, context: str,
                    perturbation: str) -> np.ndarray | None:
    """One saved predicted delta (a gene vector), or None if that model has no prediction for the condition."""
    row = _prediction_row(predictions, model=model, split=split, fold=fold, context=context, perturbation=perturbation)
    return None if row is None else np.asarray(predictions[row].X, dtype=np.float64).ravel()


def scored_against(predictions: ad.AnnData, observed: ad.AnnData, *, model: str, split: str, fold, context: str,
                   perturbation: str) -> np.ndarray | None:
    """The observed delta a saved prediction was scored against (a gene vector), or None if there is none.

    For a model, the condition's observed delta (``observed``, rows ``"context|perturbation"``). For the noise
    ceiling, the delta of the *other* half of the condition's cells (its prediction is one half): the whole data
    holds the predicting half's cells, so plotting that half against it would show their shared noise as
    agreement (r far above the ceiling's score). None when the ceiling's other half was not saved (a benchmark
    cached by a vclib before it saved both halves).
    """
    if model != CEILING:
        name = condition_id(context, perturbation)
        return np.asarray(observed[name].X, dtype=np.float64).ravel() if name in observed.obs_names else None
    row = _prediction_row(predictions, model=model, split=split, fold=fold, context=context, perturbation=perturbation)
    halves = predictions.uns.get(SCORED_AGAINST)
    if row is None or halves is None or row not in halves.index:
        return None
    return halves.loc[row].to_numpy(dtype=np.float64)
