"""evaluate(): score predictions against observed cells into one tidy table, with the metric registry."""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from vclib import pseudobulk as pbk
from vclib.metrics import _functions as fn
from vclib.metrics._de import DEResult, log2_fold_change, rank_genes
from vclib.schema import (
    CONTEXT_KEY,
    CONTROL,
    DEFAULT_CONTEXT,
    PERTURBATION_KEY,
    VclibInputError,
    canonical_label,
    check_columns,
    condition_id,
    targets,
)

ALL_CONDITIONS = "*"


@dataclass(frozen=True)
class Metric:
    """What a metric means: direction, reference values, and whether Spearman–Brown applies to its ceiling."""

    name: str
    higher_is_better: bool
    perfect: float | None  # value of a perfect prediction (None: data-dependent)
    constant: float | None  # value of a predictor that gives every perturbation the same answer (None: data-dependent)
    description: str
    # How a split-half ceiling is brought to full size (ceiling(full_size=True)): "spearman_brown" 2r/(1+r) for
    # correlations; "squared" x1/2 and "absolute" x1/sqrt(2) for errors (a half has twice the sampling variance).
    full_size: str | None = None


REGISTRY: dict[str, Metric] = {m.name: m for m in [
    Metric("mse", False, 0.0, None, "mean squared error of the pseudobulk (log1p) over genes", "squared"),
    Metric("mae", False, 0.0, None, "mean absolute error of the pseudobulk (log1p) over genes", "absolute"),
    Metric("mse_delta", False, 0.0, None, "mean squared error of the delta; predicting the control gives the "
           "mean squared observed delta", "squared"),
    Metric("mae_delta", False, 0.0, None, "mean absolute error of the delta", "absolute"),
    Metric("l2_top_genes", False, 0.0, None, "Euclidean distance on the most expressed control genes "
           "(top 1,000 by default; Ahlmann-Eltze et al. 2025)", "absolute"),
    Metric("pearson_delta", True, 1.0, None, "Pearson over genes of predicted vs observed delta (reference: "
           "control, or the perturbed centroid); undefined (NaN) when predicting the reference", "spearman_brown"),
    Metric("pearson_delta_top_de", True, 1.0, None, "pearson_delta on the observed condition's top DE genes "
           "(20 most significant by default)", "spearman_brown"),
    Metric("cosine_delta", True, 1.0, None, "cosine similarity of predicted and observed delta", "spearman_brown"),
    Metric("discrimination_score_l1", True, 1.0, 0.5, "PDS with L1 distance: 1 - r/(N-1), r = perturbations "
           "closer than the right one (ties half; target genes excluded)"),
    Metric("discrimination_score_l2", True, 1.0, 0.5, "PDS with Euclidean distance"),
    Metric("discrimination_score_cosine", True, 1.0, 0.5, "PDS with cosine distance"),
    Metric("rank", False, 0.0, 0.5, "mode-collapse rank: rank of a condition's own prediction among all "
           "predictions, as a fraction (0 perfect, 0.5 chance; PerturBench)"),
    Metric("overlap_at_N", True, 1.0, None, "|top-N predicted ∩ top-N observed DE genes| / N, N = number of "
           "observed DE genes, genes ranked by |lfc|; undefined without observed DE genes"),
    Metric("precision_at_N", True, 1.0, None, "fraction of the predicted DE genes among the same number of "
           "top observed DE genes (cell-eval's definition)"),
    Metric("de_direction_match", True, 1.0, None, "fraction of observed DE genes whose predicted lfc has the "
           "observed sign"),
    Metric("de_spearman_lfc_sig", True, 1.0, None, "Spearman of predicted vs observed lfc on observed DE genes",
           "spearman_brown"),
    Metric("hit_rate_at_k", True, None, None, "one row per context: fraction of the k perturbations with the "
           "largest predicted effect (L2 norm of the delta) that are real hits (>= hit_min_de observed DE genes); "
           "at most min(k, hits) / k"),
]}
DE_METRICS = ("pearson_delta_top_de", "overlap_at_N", "precision_at_N", "de_direction_match",
              "de_spearman_lfc_sig", "hit_rate_at_k")


def metric_table() -> pd.DataFrame:
    """The registry as a table: one row per metric with direction, perfect and constant-predictor values.

    Examples
    --------
    >>> import vclib as vc
    >>> table = vc.metrics.metric_table()
    >>> float(table.loc["discrimination_score_l1", "constant"]), float(table.loc["rank", "perfect"])
    (0.5, 0.0)
    """
    return pd.DataFrame([m.__dict__ for m in REGISTRY.values()]).set_index("name")


def _in_contract(adata: ad.AnnData, perturbation_key: str, context_key: str | None, control: str) -> ad.AnnData:
    """A light copy with the contract's obs columns (labels canonical), X untouched."""
    check_columns(adata.obs, [perturbation_key] + ([context_key] if context_key else []))
    obs = pd.DataFrame(index=adata.obs_names.copy())
    labels = adata.obs[perturbation_key].astype(str)
    mapping = {x: canonical_label(x, control=control) for x in labels.unique()}
    obs[PERTURBATION_KEY] = labels.map(mapping).to_numpy()
    obs[CONTEXT_KEY] = adata.obs[context_key].astype(str).to_numpy() if context_key else DEFAULT_CONTEXT
    return ad.AnnData(X=adata.X, obs=obs, var=pd.DataFrame(index=adata.var_names.copy()))


def _check_values(adata: ad.AnnData, side: str) -> None:
    data = adata.X.data if sparse.issparse(adata.X) else np.asarray(adata.X)
    bad = ~np.isfinite(data)
    if bad.any():
        rows = np.unique(sparse.coo_matrix(adata.X).row[bad]) if sparse.issparse(adata.X) else \
            np.unique(np.nonzero(~np.isfinite(np.asarray(adata.X)))[0])
        names = sorted({condition_id(c, p) for c, p in adata.obs.iloc[rows][[CONTEXT_KEY, PERTURBATION_KEY]]
                        .itertuples(index=False)})
        raise VclibInputError(
            f"{side} values hold NaN or inf in {len(names)} condition(s): {', '.join(map(repr, names[:8]))}."
        )
    if data.size and np.nanmax(data) > 20 and np.allclose(data, np.round(data)):
        raise VclibInputError(
            f"{side} values look like raw counts (integers up to {np.nanmax(data):.0f}); metrics compare "
            "log1p-normalised expression. Apply sc.pp.normalize_total(target_sum=1e4) and sc.pp.log1p first."
        )


def _align_genes(predicted: ad.AnnData, observed: ad.AnnData) -> ad.AnnData:
    if predicted.var_names.equals(observed.var_names):
        return predicted
    extra = predicted.var_names.difference(observed.var_names)
    missing = observed.var_names.difference(predicted.var_names)
    if len(extra) or len(missing):
        raise VclibInputError(
            f"predicted and observed genes differ: {len(missing)} observed genes not predicted "
            f"(e.g. {', '.join(map(repr, missing[:5]))}), {len(extra)} predicted genes not observed "
            f"(e.g. {', '.join(map(repr, extra[:5]))}). Predict the same genes, or subset both to the shared ones."
        )
    return predicted[:, observed.var_names]  # same set, other order: align by name


def _is_cells(adata: ad.AnnData) -> bool:
    return adata.obs.groupby([CONTEXT_KEY, PERTURBATION_KEY], observed=True).size().max() > 1


def evaluate(
    predicted: ad.AnnData,
    observed: ad.AnnData,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str | None = CONTEXT_KEY,
    control: str = CONTROL,
    conditions: list[str] | None = None,
    metrics: list[str] | None = None,
    reference: str = "control",
    predicted_control: str = "observed",
    exclude: str | list[str] | None = "own",
    ties: str = "mid",
    top_genes: int = 1000,
    top_de: int = 20,
    fdr: float = 0.05,
    epsilon: float = 1e-9,
    hit_k: int = 10,
    hit_min_de: int = 10,
    no_de: float = np.nan,
    observed_de: DEResult | None = None,
    de_options: dict | None = None,
    model: str | None = None,
    split: str | None = None,
) -> pd.DataFrame:
    """Score predictions against observed cells: one row per (context, perturbation, metric).

    Parameters
    ----------
    predicted
        Predictions as pseudobulk (one row per condition) or as cells (several rows per condition; then
        pseudobulked, and DE runs on the predicted cells). cell-eval's layout is accepted: pass
        ``perturbation_key="target_gene", control="non-targeting", context_key=None``.
    observed
        Observed cells (log1p) with control cells in every context.
    perturbation_key, context_key, control
        Column names and control label of both objects.
    conditions
        ``"context|perturbation"`` ids to score; default all predicted perturbed conditions, which must be
        exactly the observed perturbed conditions.
    metrics
        Names from :data:`REGISTRY` (default all).
    reference
        Reference of the deltas: ``"control"`` (the context's observed control) or ``"perturbed_centroid"``
        (mean of the context's observed perturbed pseudobulks, Systema).
    predicted_control
        Control subtracted on the predicted side: ``"observed"`` (default) or ``"predicted"`` (the
        predicted object's own control, as cell-eval does; needs predicted control rows/cells).
    exclude
        Genes left out of the PDS distances: ``"own"`` (each perturbation's target genes), a list (a panel
        left out for all), or None.
    ties
        PDS ties: ``"mid"`` (half each; constant predictor = 0.5) or ``"position"`` (cell-eval 0.8.2).
    top_genes
        Number of most expressed control genes for ``l2_top_genes``.
    top_de
        Number of most significant observed DE genes for ``pearson_delta_top_de``.
    fdr, epsilon
        FDR threshold of DE genes and lfc pseudocount.
    hit_k, hit_min_de
        ``hit_rate_at_k``: k, and the observed DE genes that make a perturbation a hit.
    no_de
        ``overlap_at_N`` / ``precision_at_N`` of a condition without observed DE genes: NaN (undefined, the
        default) or 0 (cell-eval's convention).
    observed_de
        DE of the observed cells from :func:`rank_genes`, to compute it once for many models.
    de_options
        Passed to :func:`rank_genes` (``tie_correction``, ``continuity``).
    model, split
        Added as columns when given.

    Returns
    -------
    DataFrame with columns ``context``, ``perturbation``, ``metric``, ``value`` (+ ``model``, ``split``).
    ``hit_rate_at_k`` has one row per context with perturbation ``"*"``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_genes=60, cells_per_condition=30)
    >>> perfect = vc.pseudobulk.pseudobulk(adata)
    >>> table = vc.metrics.evaluate(perfect, adata, metrics=["mse", "discrimination_score_l1"])
    >>> table.groupby("metric")["value"].mean().to_dict()
    {'discrimination_score_l1': 1.0, 'mse': 0.0}
    """
    metrics = list(REGISTRY) if metrics is None else list(metrics)
    unknown = [m for m in metrics if m not in REGISTRY]
    if unknown:
        raise VclibInputError(f"unknown metric(s) {unknown}; valid: {', '.join(REGISTRY)}.")
    if reference not in ("control", "perturbed_centroid"):
        raise VclibInputError(f"reference={reference!r} is not 'control' or 'perturbed_centroid'.")
    if predicted_control not in ("observed", "predicted"):
        raise VclibInputError(f"predicted_control={predicted_control!r} is not 'observed' or 'predicted'.")
    pred = _in_contract(predicted, perturbation_key, context_key, control)
    obs = _in_contract(observed, perturbation_key, context_key, control)
    pred = _align_genes(pred, obs)
    _check_values(pred, "predicted")
    _check_values(obs, "observed")
    pred_pb = pbk.pseudobulk(pred)
    obs_pb = pbk.pseudobulk(obs)
    for ctx in obs_pb.obs[CONTEXT_KEY].astype(str).unique():
        if f"{ctx}|{CONTROL}" not in obs_pb.obs_names:
            raise VclibInputError(f"context {ctx!r} has no observed control cells (label {control!r}); every "
                                  "context needs its control to compute deltas.")

    names = _conditions_to_score(pred_pb, obs_pb, conditions)
    contexts = obs_pb.obs.loc[names, CONTEXT_KEY].astype(str).to_numpy()
    perts = obs_pb.obs.loc[names, PERTURBATION_KEY].astype(str).to_numpy()
    obs_ctrl = _control_rows(obs_pb, contexts, "observed")
    pred_ctrl = _control_rows(pred_pb, contexts, "predicted") if predicted_control == "predicted" else obs_ctrl
    pb_pred = np.asarray(pred_pb[names].X, dtype=np.float64)
    pb_obs = np.asarray(obs_pb[names].X, dtype=np.float64)
    if reference == "control":
        ref_obs, ref_pred = obs_ctrl, pred_ctrl
    else:
        ref_obs = ref_pred = _perturbed_centroid(obs_pb, contexts)
    dP, dO = pb_pred - ref_pred, pb_obs - ref_obs

    values: dict[str, np.ndarray] = {}
    simple = {"mse": lambda: fn.mse(pb_pred, pb_obs), "mae": lambda: fn.mae(pb_pred, pb_obs),
              "mse_delta": lambda: fn.mse(dP, dO), "mae_delta": lambda: fn.mae(dP, dO),
              "pearson_delta": lambda: fn.pearson(dP, dO), "cosine_delta": lambda: fn.cosine(dP, dO)}
    for m in metrics:
        if m in simple:
            values[m] = simple[m]()
    if "l2_top_genes" in metrics:
        values["l2_top_genes"] = np.empty(len(names))
        for ctx in np.unique(contexts):
            rows = contexts == ctx
            genes = fn.top_expressed(obs_ctrl[np.flatnonzero(rows)[0]], k=top_genes)
            values["l2_top_genes"][rows] = fn.l2(pb_pred[rows], pb_obs[rows], genes=genes)
    gene_index = {g: i for i, g in enumerate(obs.var_names)}
    for m in metrics:
        if m.startswith("discrimination_score_") or m == "rank":
            values[m] = np.full(len(names), np.nan)
    for ctx in np.unique(contexts):
        rows = np.flatnonzero(contexts == ctx)
        excluded = _excluded_genes(perts[rows], exclude, gene_index)
        for m in metrics:
            if m.startswith("discrimination_score_"):
                values[m][rows] = fn.discrimination_score(dP[rows], dO[rows], distance=m.rsplit("_", 1)[1],
                                                          exclude=excluded, ties=ties)
        if "rank" in metrics:
            values["rank"][rows] = fn.rank_metric(dP[rows], dO[rows], distance="l1")

    table = _long(contexts, perts, values)
    if any(m in DE_METRICS for m in metrics):
        table = pd.concat([table, _de_metrics(
            pred, obs, pred_pb, names, metrics, pred_ctrl=pred_ctrl, dP=dP, dO=dO, fdr=fdr, epsilon=epsilon,
            top_de=top_de, hit_k=hit_k, hit_min_de=hit_min_de, no_de=no_de, observed_de=observed_de,
            predicted_control=predicted_control, de_options=de_options or {})], ignore_index=True)
    if model is not None:
        table["model"] = model
    if split is not None:
        table["split"] = split
    return table


def _conditions_to_score(pred_pb: ad.AnnData, obs_pb: ad.AnnData, conditions) -> list[str]:
    predicted = [n for n, c in zip(pred_pb.obs_names, pred_pb.obs["is_control"], strict=True) if not c]
    observed = [n for n, c in zip(obs_pb.obs_names, obs_pb.obs["is_control"], strict=True) if not c]
    if conditions is None:
        not_observed = sorted(set(predicted) - set(observed))
        not_predicted = sorted(set(observed) - set(predicted))
        if not_observed:
            raise VclibInputError(f"{len(not_observed)} predicted condition(s) are not in the observed data: "
                                  f"{', '.join(map(repr, not_observed[:8]))}.")
        if not_predicted:
            raise VclibInputError(
                f"{len(not_predicted)} observed condition(s) have no prediction: "
                f"{', '.join(map(repr, not_predicted[:8]))}. Predict them, or pass conditions= to score a subset."
            )
        return sorted(predicted)
    for side, have in (("predicted", set(predicted)), ("observed", set(observed))):
        missing = [c for c in conditions if c not in have]
        if missing:
            raise VclibInputError(f"condition(s) {', '.join(map(repr, missing[:8]))} not in the {side} data.")
    return list(conditions)


def _control_rows(pb: ad.AnnData, contexts: np.ndarray, side: str) -> np.ndarray:
    """Each row's context control pseudobulk."""
    missing = sorted({c for c in contexts if f"{c}|{CONTROL}" not in pb.obs_names})
    if missing:
        raise VclibInputError(f"no {side} control for context(s) {missing}" + (
            "; predicted_control='predicted' needs the predicted control cells or row." if side == "predicted"
            else "."))
    return np.asarray(pb[[f"{c}|{CONTROL}" for c in contexts]].X, dtype=np.float64)


def _perturbed_centroid(obs_pb: ad.AnnData, contexts: np.ndarray) -> np.ndarray:
    """Each row's context mean over all observed perturbed pseudobulks (Systema's perturbed centroid)."""
    X = np.asarray(obs_pb.X, dtype=np.float64)
    perturbed = ~obs_pb.obs["is_control"].to_numpy()
    ctx = obs_pb.obs[CONTEXT_KEY].astype(str).to_numpy()
    centroid = {c: X[perturbed & (ctx == c)].mean(axis=0) for c in np.unique(contexts)}
    return np.vstack([centroid[c] for c in contexts])


def _excluded_genes(perts, exclude, gene_index) -> list | None:
    if exclude is None:
        return None
    if exclude == "own":
        return [[gene_index[t] for t in targets(p) if t in gene_index] for p in perts]
    panel = [gene_index[g] for g in exclude if g in gene_index]
    return [panel] * len(perts)


def _long(contexts, perts, values: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long table from per-row arrays, one block of rows per metric."""
    names = list(values)
    return pd.DataFrame({
        CONTEXT_KEY: np.tile(np.asarray(contexts, dtype=object), len(names)),
        PERTURBATION_KEY: np.tile(np.asarray(perts, dtype=object), len(names)),
        "metric": np.repeat(np.asarray(names, dtype=object), len(contexts)),
        "value": np.concatenate([values[m] for m in names]).astype(np.float64) if names else np.zeros(0),
    })


def _top_abs(lfc: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Boolean rows × genes: each row's ``n[i]`` genes of largest |lfc| (ties by gene order)."""
    out = np.zeros(lfc.shape, dtype=bool)
    for i, k in enumerate(n):
        out[i, np.argsort(-np.abs(lfc[i]).astype(np.float32), kind="stable")[:k]] = True
    return out


def _de_metrics(pred, obs, pred_pb, names, metrics, *, pred_ctrl, dP, dO, fdr, epsilon, top_de, hit_k,
                hit_min_de, no_de, observed_de, predicted_control, de_options) -> pd.DataFrame:
    obs_de = observed_de if observed_de is not None else rank_genes(obs, epsilon=epsilon, **de_options)
    obs_de = obs_de.subset(names)
    obs_sig = obs_de.significant(fdr)
    if _is_cells(pred):
        cells = pred[pred.obs[PERTURBATION_KEY] != CONTROL] if predicted_control == "observed" else pred
        if predicted_control == "observed":
            cells = ad.concat([cells, obs[obs.obs[PERTURBATION_KEY] == CONTROL]], merge="same")
        pred_de = rank_genes(cells, epsilon=epsilon, **de_options).subset(names)
        pred_lfc, pred_sig, top_obs = pred_de.lfc, pred_de.significant(fdr), obs_sig
    else:
        # Pseudobulk predictions have no p-values: both sides then rank all genes by |lfc| and keep the top N,
        # N = number of observed DE genes, so a perfect prediction scores 1.
        pred_lfc = log2_fold_change(np.asarray(pred_pb[names].X, dtype=np.float64), pred_ctrl, epsilon=epsilon)
        n_sig = obs_sig.sum(axis=1)
        pred_sig, top_obs = _top_abs(pred_lfc, n_sig), _top_abs(obs_de.lfc, n_sig)
    contexts = obs_de.conditions[CONTEXT_KEY].astype(str).to_numpy()
    perts = obs_de.conditions[PERTURBATION_KEY].astype(str).to_numpy()
    values = {}
    if "pearson_delta_top_de" in metrics:
        top = np.zeros_like(obs_sig)
        for i in range(len(names)):
            sig = np.flatnonzero(obs_sig[i])
            top[i, sig[np.argsort(obs_de.pvalue[i, sig], kind="stable")[:top_de]]] = True
        values["pearson_delta_top_de"] = np.where(top.sum(axis=1) >= 2, fn.pearson(dP, dO, mask=top), np.nan)
    if "overlap_at_N" in metrics:
        values["overlap_at_N"] = fn.de_overlap(pred_lfc, pred_sig, obs_de.lfc, top_obs, no_de=no_de)
    if "precision_at_N" in metrics:
        values["precision_at_N"] = fn.de_precision(pred_lfc, pred_sig, obs_de.lfc, top_obs, no_de=no_de)
    if "de_direction_match" in metrics:
        values["de_direction_match"] = fn.de_direction(pred_lfc, obs_de.lfc, obs_sig)
    if "de_spearman_lfc_sig" in metrics:
        values["de_spearman_lfc_sig"] = fn.de_spearman(pred_lfc, obs_de.lfc, obs_sig)
    table = _long(contexts, perts, values)
    if "hit_rate_at_k" in metrics:
        effect = np.linalg.norm(dP, axis=1)
        hits = obs_sig.sum(axis=1) >= hit_min_de
        per_context = np.unique(contexts)
        rates = np.array([fn.hit_rate_at_k(effect[contexts == c], hits[contexts == c], k=hit_k) for c in per_context])
        table = pd.concat([table, _long(per_context, [ALL_CONDITIONS] * len(per_context), {"hit_rate_at_k": rates})],
                          ignore_index=True)
    return table
