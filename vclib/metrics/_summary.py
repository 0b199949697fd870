"""From per-condition scores to conclusions: bootstrap CIs, paired differences, noise ceiling, calibration.

Confidence intervals resample *perturbations* (conditions): every row of one (context, perturbation), whatever its
fold and seed, goes in or out of a resample together (a cluster bootstrap), so more seeds narrow an interval only
as far as they reduce the split-to-split noise, not by counting a perturbation twice. Each group (a model on a
split and metric, say) draws from its own random stream derived from ``seed`` and the group's name, so its
interval does not change when other models are added to the table.
"""

from __future__ import annotations

import hashlib

import anndata as ad
import numpy as np
import pandas as pd

from vclib import pseudobulk as pbk
from vclib.metrics._evaluate import DE_METRICS, REGISTRY, Observed, check_metrics, prepare, score
from vclib.schema import CONTEXT_KEY, CONTROL, PERTURBATION_KEY, VclibInputError

CEILING = "ceiling"
CLUSTER = (CONTEXT_KEY, PERTURBATION_KEY)
PAIR_KEYS = ("split", "fold", "seed", CONTEXT_KEY, PERTURBATION_KEY)
MIN_N = 5


def group_rng(seed: int | None, key) -> np.random.Generator:
    """A random stream for one group, derived from ``seed`` and the group's key (independent of other groups).

    Examples
    --------
    >>> a = group_rng(0, ("mlp", "unseen_context")).integers(1000)
    >>> b = group_rng(0, ("mlp", "unseen_context")).integers(1000)
    >>> bool(a == b)
    True
    """
    if seed is None:
        return np.random.default_rng()
    key = key if isinstance(key, tuple) else (key,)
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def cluster_bootstrap(values: np.ndarray, clusters: np.ndarray, *, n_boot: int = 1000, ci: float = 0.95,
                      rng: np.random.Generator) -> tuple[float, float, float, int]:
    """Mean of ``values`` and its percentile bootstrap interval, resampling whole clusters with replacement.

    Each resample draws as many clusters as there are (``rng.integers(0, K, (n_boot, K))``, the draws of
    ``scipy.stats.bootstrap``) and takes the mean of all their rows. With one row per cluster this is the
    ordinary bootstrap of the mean.

    Returns
    -------
    ``(mean, low, high, number of clusters)``; NaN bounds for an empty input.
    """
    values = np.asarray(values, dtype=np.float64)
    codes, uniques = pd.factorize(pd.Series(clusters), sort=False)
    k = len(uniques)
    if k == 0:
        return np.nan, np.nan, np.nan, 0
    sums = np.bincount(codes, weights=values, minlength=k)
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    idx = rng.integers(0, k, (n_boot, k))
    stats = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    low, high = np.percentile(stats, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return float(sums.sum() / counts.sum()), float(low), float(high), k


def _clusters(frame: pd.DataFrame) -> np.ndarray:
    keys = [k for k in CLUSTER if k in frame.columns]
    if not keys:
        return np.arange(len(frame))
    labels = frame[keys[0]].astype(str)
    for key in keys[1:]:  # "context|perturbation", column-wise (a row-wise join is ~50x slower)
        labels = labels + "|" + frame[key].astype(str)
    return labels.to_numpy()


def _group_keys(table: pd.DataFrame, by) -> list[str]:
    return [k for k in by if k in table.columns]


def _reason(notes: pd.Series) -> str:
    notes = notes[notes.astype(str).str.len() > 0].astype(str)
    return notes.value_counts().index[0] if len(notes) else "undefined"


def aggregate(
    table: pd.DataFrame,
    *,
    by: tuple[str, ...] = ("model", "split", "metric"),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int | None = 0,
) -> pd.DataFrame:
    """Mean of each metric with a bootstrap confidence interval over perturbations.

    Parameters
    ----------
    table
        Output of :func:`evaluate` or :func:`vclib.benchmark.run` (several concatenated).
    by
        Grouping columns (those present are used); add ``"context"`` for per-context summaries.
    n_boot, ci, seed
        Bootstrap resamples, interval level and seed. Perturbations (``context`` × ``perturbation``) are
        resampled as clusters: all folds and seeds of one together.

    Returns
    -------
    One row per group: ``mean``, ``ci_low``, ``ci_high``, ``n`` (perturbations with a defined value), ``n_nan``
    (perturbations whose value is undefined everywhere, left out of the mean), ``n_rows`` (rows averaged) and
    ``note`` (why values are undefined, when some are).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"metric": "mse", "value": [1.0, 2.0, 3.0]})
    >>> aggregate(t)[["metric", "mean", "n"]].to_dict("records")
    [{'metric': 'mse', 'mean': 2.0, 'n': 3}]
    """
    keys = _group_keys(table, by)
    rows = []
    for key, group in table.groupby(keys, sort=True, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        values = group["value"].to_numpy(dtype=np.float64)
        clusters = _clusters(group)
        finite = np.isfinite(values)
        mean, low, high, n = cluster_bootstrap(values[finite], clusters[finite], n_boot=n_boot, ci=ci,
                                               rng=group_rng(seed, key))
        n_nan = len(set(clusters) - set(clusters[finite]))
        note = ""
        if n_nan:
            reason = _reason(group["note"][~finite]) if "note" in group else "undefined"
            note = reason if n == 0 else f"{n_nan} of {n + n_nan} undefined: {reason}"
        rows.append({**dict(zip(keys, key, strict=True)), "mean": mean, "ci_low": low, "ci_high": high, "n": n,
                     "n_nan": n_nan, "n_rows": int(finite.sum()), "note": note})
    return pd.DataFrame(rows, columns=[*keys, "mean", "ci_low", "ci_high", "n", "n_nan", "n_rows", "note"])


def too_few(n: int) -> str:
    """The verdict given instead of wins/ties/loses below the minimum number of conditions."""
    return f"too few conditions (n = {n})"


def verdict(low: float, high: float, *, metric: str | None, n: int, min_n: int = MIN_N) -> str:
    """``"yes"`` / ``"no"`` when a difference's CI excludes 0 in the metric's good / bad direction, ``"tie"``
    otherwise, and :func:`too_few` below ``min_n`` conditions."""
    if n < min_n:
        return too_few(n)
    sign = 1 if metric not in REGISTRY or REGISTRY[metric].higher_is_better else -1
    lo, hi = sorted((sign * low, sign * high))
    return "yes" if lo > 0 else "no" if hi < 0 else "tie"


def compare(
    table: pd.DataFrame,
    *,
    baseline: str,
    by: tuple[str, ...] = ("split", "metric"),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int | None = 0,
    min_n: int = MIN_N,
) -> pd.DataFrame:
    """Paired difference model − baseline on the same conditions, with a bootstrap CI over perturbations.

    Rows are paired on split, fold, seed, context and perturbation (those present); the CI resamples
    perturbations as clusters (all folds and seeds of one together).

    Parameters
    ----------
    table
        Concatenated :func:`evaluate` outputs with a ``model`` column holding ``baseline``.
    baseline
        The model every other model is compared with.
    by
        Grouping columns besides ``model``.
    n_boot, ci, seed
        Bootstrap resamples, level and seed (one stream per group, derived from ``seed``).
    min_n
        Fewest perturbations a verdict rests on; below it the verdict is ``"too few conditions (n = …)"``.

    Returns
    -------
    One row per (model, group): ``difference`` (mean of model − baseline), ``ci_low``, ``ci_high``, ``n``
    (perturbations), ``n_pairs`` (paired rows), and ``better``: ``"yes"`` / ``"no"`` when the CI excludes 0 in
    the metric's good / bad direction, ``"tie"`` otherwise, ``"n/a"`` without defined pairs. ``attrs["baseline"]``
    names the baseline.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"model": ["a"] * 5 + ["b"] * 5, "metric": "mse", "context": "c",
    ...                   "perturbation": list("vwxyz") * 2, "value": [1.0] * 5 + [2.0, 2.1, 1.9, 2.0, 2.2]})
    >>> compare(t, baseline="b")[["model", "difference", "better"]].round(2).to_dict("records")
    [{'model': 'a', 'difference': -1.04, 'better': 'yes'}]
    """
    keys = _group_keys(table, by)
    columns = ["model", *keys, "difference", "ci_low", "ci_high", "n", "n_pairs", "better"]
    if table.empty:  # nothing was scored (e.g. no split applies): nothing to compare
        return pd.DataFrame(columns=columns)
    if baseline not in set(table["model"]):
        raise VclibInputError(f"baseline {baseline!r} not among the models: {sorted(set(table['model']))}.")
    pair = list(dict.fromkeys([*keys, *[k for k in PAIR_KEYS if k in table.columns]]))
    base = table[table["model"] == baseline]
    if base.duplicated(pair).any():
        raise VclibInputError(f"the baseline has several rows for the same {pair}; add the missing key column.")
    base = base.set_index(pair)["value"]
    rows = []
    for model, own in table[table["model"] != baseline].groupby("model", sort=True):
        joined = own.set_index(pair)["value"].to_frame("model").join(base.rename("baseline"), how="inner")
        joined = joined.reset_index()
        groups = joined.groupby(keys, sort=True, observed=True) if keys else [((), joined)]
        for key, group in groups:
            key = key if isinstance(key, tuple) else (key,)
            row = {"model": model, **dict(zip(keys, key, strict=True))}
            diff = (group["model"] - group["baseline"]).to_numpy(dtype=np.float64)
            ok = np.isfinite(diff)
            mean, low, high, n = cluster_bootstrap(diff[ok], _clusters(group)[ok], n_boot=n_boot, ci=ci,
                                                   rng=group_rng(seed, (model, baseline, *key)))
            better = "n/a" if n == 0 else verdict(low, high, metric=row.get("metric"), n=n, min_n=min_n)
            rows.append({**row, "difference": mean, "ci_low": low, "ci_high": high, "n": n,
                         "n_pairs": int(ok.sum()), "better": better})
    out = pd.DataFrame(rows, columns=columns)
    out.attrs["baseline"] = baseline  # for the plots' labels (vclib.pl.versus_baseline names it)
    return out


def _splittable(a: Observed, b: Observed) -> set[str]:
    """Perturbed conditions with cells in both halves whose context has control cells in both halves."""
    have = [set(h.pseudobulk.obs_names) for h in (a, b)]
    both = have[0] & have[1]
    return {n for n in both if not n.endswith(f"|{CONTROL}") and f"{n.split('|', 1)[0]}|{CONTROL}" in both}


def ceiling(
    observed: ad.AnnData | Observed,
    *,
    noise_free: bool = True,
    seed: int | None = 0,
    conditions: list[str] | None = None,
    metrics: list[str] | None = None,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str | None = CONTEXT_KEY,
    control: str = CONTROL,
    epsilon: float = 1e-9,
    de_options: dict | None = None,
    **options,
) -> pd.DataFrame:
    """Noise ceiling from split halves: half of each condition's observed cells scored as the prediction of the
    other half, then corrected to what a noise-free prediction scores against the whole data.

    Every condition's cells (controls included) are split into two disjoint random halves; half 0, with its own
    control, is the "prediction" and half 1 the observation, DE recomputed on both (once per seed when
    ``observed`` is an :class:`Observed`). Two half-size replicates agree less than a noise-free prediction agrees
    with the full data, so with ``noise_free=True`` (default) each value is corrected by its metric's rule
    (``REGISTRY[name].ceiling``, in words in :func:`metric_table`): correlations are disattenuated
    (``sqrt(2r/(1+r))``, the square root of the Spearman-Brown reliability), squared errors divided by 4, absolute
    errors by 2; metrics without a known correction (PDS, rank, DE overlap, hit rate) stay as measured, which a
    noise-free full-size prediction can beat. Where a correction is undefined the value is NaN and ``note`` says
    why. ``noise_free=False`` gives the raw half-vs-half values.

    Parameters
    ----------
    observed
        Observed cells in the data contract, or an :class:`Observed`.
    noise_free
        Correct to the expected score of a noise-free predictor (see above).
    seed
        Seed of the split.
    conditions
        Conditions to score; default every condition with cells in both halves (at least 2 cells, and 2 control
        cells in its context). Asking for one that cannot be split is an error naming it.
    metrics, perturbation_key, context_key, control, epsilon, de_options, **options
        As for :func:`evaluate`.

    Returns
    -------
    The :func:`evaluate` table with ``model = "ceiling"``; ``attrs["notes"]`` names the perturbed conditions left
    out by default because they cannot be split in halves.

    References
    ----------
    Spearman (1904, 1910), Brown (1910); cell-eval 0.8.2 ``--ceiling``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_genes=60, cells_per_condition=30)
    >>> c = vc.metrics.ceiling(adata, metrics=["pearson_delta"])
    >>> bool(c["value"].mean() > 0.5)
    True
    """
    metrics = check_metrics(metrics)
    obs = prepare(observed, perturbation_key=perturbation_key, context_key=context_key, control=control,
                  epsilon=epsilon, de_options=de_options)
    if isinstance(observed, Observed) and any(m in DE_METRICS for m in metrics):
        observed.check_de_options(epsilon, de_options)
    a, b = obs.halves(seed)
    splittable = _splittable(a, b)
    if conditions is None:
        names = sorted(splittable)
        if not names:
            raise VclibInputError("no condition can be split in halves (each needs 2 or more cells, and its context "
                                  "2 or more control cells): there is no replicate to form a noise ceiling.")
    else:
        names = list(conditions)
        bad = [n for n in names if n not in splittable]
        if bad:
            known = set(obs.pseudobulk.obs_names)
            unknown = [n for n in bad if n not in known]
            if unknown:
                raise VclibInputError(f"condition(s) {', '.join(map(repr, unknown[:8]))} not in the observed data.")
            raise VclibInputError(
                f"{len(bad)} condition(s) cannot be split in halves for the noise ceiling "
                f"({', '.join(map(repr, bad[:8]))}):"
                " a condition needs 2 or more cells and its context 2 or more control cells. Leave them out of "
                "conditions=, or pass conditions=None to score every condition that can be split."
            )
    wants_de = any(m in DE_METRICS for m in metrics)
    table = score(a.pseudobulk, b, names, metrics, pred_de=a.de if wants_de else None, epsilon=obs.epsilon,
                  **{**options, "predicted_control": "predicted"})
    table["model"] = CEILING
    if noise_free:
        table["value"], table["note"] = to_noise_free(table)
    left_out = sorted(set(obs.pseudobulk.obs_names[~obs.pseudobulk.obs["is_control"].to_numpy()]) - set(names))
    table.attrs["notes"] = [] if conditions is not None or not left_out else [{
        "analysis": "noise ceiling", "reason": (
            f"{len(left_out)} condition(s) have too few cells to split in halves (2 per condition and 2 control "
            f"cells per context) and get no ceiling: {', '.join(left_out[:8])}"
            + (" ..." if len(left_out) > 8 else ""))}]
    return table


def to_noise_free(table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Split-half values corrected to the expected score of a noise-free predictor, per metric rule
    (``REGISTRY[name].ceiling``; see :func:`ceiling`), and the note of each value (why it is undefined).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"metric": ["pearson_delta", "mse_delta", "pearson_delta"], "value": [0.6, 0.4, -1.0],
    ...                   "note": ""})
    >>> values, notes = to_noise_free(t)
    >>> values.round(4).tolist()[:2], notes.tolist()[2]
    ([0.866, 0.1], 'split-half r = -1: Spearman-Brown undefined')
    """
    rule = table["metric"].map(lambda m: REGISTRY[m].ceiling if m in REGISTRY else None)
    r = table["value"].astype(np.float64)
    notes = table["note"].copy() if "note" in table else pd.Series("", index=table.index)
    out = r.copy()
    corr = rule == "disattenuated"
    with np.errstate(invalid="ignore", divide="ignore"):
        reliability = 2 * r / (1 + r)
        defined = corr & (r > -1) & np.isfinite(reliability)
        out[corr] = np.sqrt(reliability.clip(lower=0))[corr]
        out[corr & ~defined] = np.nan
        notes[corr & (r <= -1)] = "split-half r = -1: Spearman-Brown undefined"
        nonpositive = defined & (reliability <= 0)
        notes[nonpositive] = ("split-half r <= 0: reliability <= 0, so a noise-free prediction's expected "
                              "correlation is 0")
        squared_r = rule == "disattenuated_r2"
        root = np.sqrt(r.clip(lower=0))
        out[squared_r] = (2 * root / (1 + root))[squared_r]
    out[rule == "squared"] = r[rule == "squared"] / 4
    out[rule == "absolute"] = r[rule == "absolute"] / 2
    notes[np.isfinite(out) & ~nonpositive] = ""
    return out, notes


def calibrate(
    scores: pd.DataFrame,
    *,
    baseline: str,
    ceiling_model: str = CEILING,
    by: tuple[str, ...] = ("split", "metric"),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int | None = 0,
    min_n: int = MIN_N,
) -> pd.DataFrame:
    """Calibrated score ``(u − b) / (c − b)`` per model: 0 = the baseline, 1 = the noise ceiling.

    Reported only where the ceiling is clearly better than the baseline: the paired difference ``c − b`` (CI
    over perturbations) must exclude 0 in the metric's good direction. Elsewhere the score is "not calibratable
    here" (NaN, with the reason in ``calibration_note``): dividing by a span that could be 0 or negative gives
    numbers of any size and either sign. Never clipped: below 0 is worse than the baseline, above 1 beyond the
    ceiling.

    Parameters
    ----------
    scores
        Per-condition scores (:func:`evaluate` / :func:`vclib.benchmark.run` output) holding the models,
        ``baseline`` and ``ceiling_model``.
    baseline
        Name of the baseline model ``b``.
    ceiling_model
        Name of the ceiling rows ``c``.
    by, n_boot, ci, seed, min_n
        Groups and the bootstrap of :func:`compare`.

    Returns
    -------
    One row per (model, group) for the other models: ``mean``, ``n``, ``baseline_mean``, ``ceiling_mean``,
    ``span`` (c − b) with ``span_low`` / ``span_high``, ``calibrated`` and ``calibration_note``.

    Examples
    --------
    >>> import pandas as pd
    >>> s = pd.DataFrame({"model": ["m"] * 5 + ["b"] * 5 + ["ceiling"] * 5, "metric": "pearson_delta",
    ...                   "perturbation": list("vwxyz") * 3,
    ...                   "value": [0.5, 0.5, 0.6, 0.4, 0.5] + [0.2] * 5 + [0.8, 0.8, 0.7, 0.9, 0.8]})
    >>> calibrate(s, baseline="b")["calibrated"].round(3).tolist()
    [0.5]
    """
    keys = _group_keys(scores, by)
    if scores.empty:  # nothing was scored: nothing to calibrate
        return pd.DataFrame(columns=["model", *keys, "mean", "n", "baseline_mean", "ceiling_mean", "span",
                                     "span_low", "span_high", "calibrated", "calibration_note"])
    for name in (baseline, ceiling_model):
        if name not in set(scores["model"]):
            raise VclibInputError(f"{name!r} not among the models of the scores: {sorted(set(scores['model']))}.")
    summary = aggregate(scores, by=("model", *keys), n_boot=n_boot, ci=ci, seed=seed)
    span = compare(scores[scores["model"].isin([baseline, ceiling_model])], baseline=baseline, by=tuple(keys),
                   n_boot=n_boot, ci=ci, seed=seed, min_n=min_n)
    span = span.rename(columns={"difference": "span", "ci_low": "span_low", "ci_high": "span_high",
                                "better": "_clear"}).drop(columns=["model", "n", "n_pairs"])
    means = lambda name: summary[summary["model"] == name].set_index(keys)["mean"]  # noqa: E731
    out = summary[~summary["model"].isin([baseline, ceiling_model])][["model", *keys, "mean", "n"]]
    out = out.join(means(baseline).rename("baseline_mean"), on=keys).join(
        means(ceiling_model).rename("ceiling_mean"), on=keys).merge(span, on=keys, how="left")
    clear = out["_clear"] == "yes"
    out["calibrated"] = np.where(clear, (out["mean"] - out["baseline_mean"]) / (out["ceiling_mean"] -
                                                                                   out["baseline_mean"]), np.nan)
    out["calibration_note"] = [
        "" if ok else (f"not calibratable here: {verdict_text}" if isinstance(verdict_text, str) and
                       verdict_text.startswith("too few") else
                       f"not calibratable here: no condition where both {baseline} and the ceiling are defined"
                       if verdict_text == "n/a" or pd.isna(verdict_text) else
                       f"not calibratable here: the ceiling is not clearly better than {baseline} "
                       f"(c − b = {s:.3g} [{lo:.3g}, {hi:.3g}])")
        for ok, verdict_text, s, lo, hi in zip(clear, out["_clear"], out["span"], out["span_low"], out["span_high"],
                                               strict=True)]
    return out.drop(columns="_clear").reset_index(drop=True)


def beyond_ceiling(scores: pd.DataFrame, *, ceiling_model: str = CEILING, by: tuple[str, ...] = ("split", "metric"),
                   n_boot: int = 1000, seed: int | None = 0, min_n: int = MIN_N) -> pd.DataFrame:
    """Models that score better than the noise ceiling beyond the CI of the paired difference, with the likely
    reason in words (``why``). A ceiling is an estimate, not a law: on metrics without a full-size correction it
    is a half-size replicate, which a good full-size prediction can beat; on corrected metrics it is itself
    estimated from noisy halves.

    Returns
    -------
    The rows of :func:`compare` (model − ceiling) where the model is better, with a ``why`` column.
    """
    versus = compare(scores, baseline=ceiling_model, by=by, n_boot=n_boot, seed=seed, min_n=min_n)
    above = versus[versus["better"] == "yes"].copy()
    if "metric" not in above:
        return above.assign(why=pd.Series(dtype=object))
    above["why"] = [
        "this metric's ceiling is a half-size replicate (no correction to full size is known), which a prediction "
        "close to the full-size truth can beat" if REGISTRY.get(m) is None or REGISTRY[m].ceiling is None else
        "the ceiling is estimated from two noisy halves of few cells; a prediction that carries information the "
        "halves lack (e.g. the same perturbation measured elsewhere) or an unlucky split can exceed it"
        for m in above["metric"]]
    return above.reset_index(drop=True)


def predict_control(observed: ad.AnnData | Observed, conditions: list[str] | None = None) -> ad.AnnData:
    """Pseudobulk "prediction" that every perturbation leaves its context's control unchanged.

    Useful as the trivial reference: its delta metrics take their no-change values.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> pred = vc.metrics.predict_control(adata)
    >>> float(vc.metrics.evaluate(pred, adata, metrics=["mse_delta"])["value"].min()) > 0
    True
    """
    pb = observed.pseudobulk if isinstance(observed, Observed) else pbk.pseudobulk(observed)
    perturbed = pb[~pb.obs["is_control"].to_numpy()]
    if conditions is not None:
        perturbed = perturbed[list(conditions)]
    controls = pb[[f"{c}|{CONTROL}" for c in perturbed.obs[CONTEXT_KEY].astype(str)]]
    return ad.AnnData(X=np.asarray(controls.X).copy(), obs=perturbed.obs.copy(), var=pb.var.copy())
