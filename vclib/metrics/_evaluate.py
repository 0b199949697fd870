"""evaluate(): score predictions against observed cells into one tidy table, with the metric registry."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from vclib import pseudobulk as pbk
from vclib.metrics import _functions as fn
from vclib.metrics._de import DEResult, log2_fold_change, rank_genes
from vclib.metrics._observed import Observed, check_values, in_contract, prepare
from vclib.schema import (
    CONTEXT_KEY,
    CONTROL,
    PERTURBATION_KEY,
    VclibInputError,
    condition_id,
    targets,
)

ALL_CONDITIONS = "*"
LEVELS = ("auto", "cells", "pseudobulk")
EXCLUDE = ("targets", "own")

# How a split-half value becomes the ceiling: the expected score of a noise-free predictor (one that knows every
# condition's true response and builds on the observed control, as every baseline does) against the full data.
CEILING_RULES = {
    "disattenuated": "sqrt(2r/(1+r)): a noise-free prediction correlates with the observed response at most as "
                     "the square root of its reliability (Spearman-Brown of the split-half r)",
    "disattenuated_r2": "2r/(1+r) with r = sqrt(split-half R²): the squared correlation's bound is the reliability",
    "squared": "split-half value / 4: two halves differ by twice the noise variance of a half, a half has twice "
               "that of the whole",
    "absolute": "split-half value / 2: the square root of the squared rule",
    None: "as measured between two half-size replicates (no correction known for this metric; a noise-free "
          "full-size predictor can score better)",
}


@dataclass(frozen=True)
class Metric:
    """What a metric means: direction, reference values, and how its split-half ceiling is corrected."""

    name: str
    higher_is_better: bool
    perfect: float | None  # value of a perfect prediction (None: data-dependent)
    constant: float | None  # value of a predictor that gives every perturbation the same answer (None: data-dependent)
    description: str
    ceiling: str | None = None  # a key of CEILING_RULES


_PDS = ("PDS with {} distance: 1 - r/(N-1), r = perturbations whose observed delta is closer to the prediction than "
        "the right one (ties half); the union of the context's target genes is left out of every distance, so a "
        "constant predictor scores exactly 0.5 (with exclude='own', each query's own targets: data-dependent)")

REGISTRY: dict[str, Metric] = {m.name: m for m in [
    Metric("mse", False, 0.0, None, "mean squared error of the pseudobulk (log1p) over genes", "squared"),
    Metric("mae", False, 0.0, None, "mean absolute error of the pseudobulk (log1p) over genes", "absolute"),
    Metric("mse_delta", False, 0.0, None, "mean squared error of the delta; predicting the control gives the "
           "mean squared observed delta", "squared"),
    Metric("mae_delta", False, 0.0, None, "mean absolute error of the delta", "absolute"),
    Metric("l2_top_genes", False, 0.0, None, "Euclidean distance on the most expressed control genes "
           "(top 1,000 by default; Ahlmann-Eltze et al. 2025)", "absolute"),
    Metric("pearson_delta", True, 1.0, None, "Pearson over genes of predicted vs observed delta (reference: "
           "control, or the perturbed centroid); undefined (NaN) when predicting the reference", "disattenuated"),
    Metric("pearson_delta_top_de", True, 1.0, None, "pearson_delta on the observed condition's top DE genes "
           "(20 most significant by default)", "disattenuated"),
    Metric("cosine_delta", True, 1.0, None, "cosine similarity of predicted and observed delta", "disattenuated"),
    Metric("r2_mean", True, 1.0, None, "R² (squared Pearson over genes) of predicted vs observed mean expression "
           "of the condition, as scGen, CPA and most cross-cell-type benchmarks report it", "disattenuated_r2"),
    Metric("r2_mean_top100", True, 1.0, None, "r2_mean on the condition's 100 genes of largest observed |delta|",
           "disattenuated_r2"),
    Metric("discrimination_score_l1", True, 1.0, 0.5, _PDS.format("L1")),
    Metric("discrimination_score_l2", True, 1.0, 0.5, _PDS.format("Euclidean")),
    Metric("discrimination_score_cosine", True, 1.0, 0.5, _PDS.format("cosine")),
    Metric("rank", False, 0.0, 0.5, "mode-collapse rank: rank of a condition's own prediction among all "
           "predictions, as a fraction (0 perfect, 0.5 chance; PerturBench)"),
    Metric("overlap_at_N", True, 1.0, None, "|top-N predicted ∩ top-N observed DE genes| / N, N = number of "
           "observed DE genes, genes ranked by |lfc|; undefined without observed DE genes"),
    Metric("precision_at_N", True, 1.0, None, "fraction of the predicted DE genes among the same number of "
           "top observed DE genes (cell-eval's definition)"),
    Metric("de_direction_match", True, 1.0, None, "fraction of observed DE genes whose predicted lfc has the "
           "observed sign"),
    Metric("de_spearman_lfc_sig", True, 1.0, None, "Spearman of predicted vs observed lfc on observed DE genes",
           "disattenuated"),
    Metric("hit_rate_at_k", True, None, None, "one row per context: fraction of the k perturbations with the "
           "largest predicted effect (L2 norm of the delta) that are real hits (>= hit_min_de observed DE genes); "
           "at most min(k, hits) / k; undefined in a context without hits"),
]}
DE_METRICS = ("pearson_delta_top_de", "overlap_at_N", "precision_at_N", "de_direction_match",
              "de_spearman_lfc_sig", "hit_rate_at_k")


def metric_table() -> pd.DataFrame:
    """The registry as a table: one row per metric with direction, perfect and constant-predictor values and the
    correction of its noise ceiling (``ceiling_rule`` in words).

    Examples
    --------
    >>> import vclib as vc
    >>> table = vc.metrics.metric_table()
    >>> float(table.loc["discrimination_score_l1", "constant"]), float(table.loc["rank", "perfect"])
    (0.5, 0.0)
    """
    table = pd.DataFrame([m.__dict__ for m in REGISTRY.values()]).set_index("name")
    table["ceiling_rule"] = [CEILING_RULES[m.ceiling] for m in REGISTRY.values()]
    return table


def _align_genes(predicted: ad.AnnData, genes: pd.Index) -> ad.AnnData:
    if predicted.var_names.equals(genes):
        return predicted
    extra = predicted.var_names.difference(genes)
    missing = genes.difference(predicted.var_names)
    if len(extra) or len(missing):
        raise VclibInputError(
            f"predicted and observed genes differ: {len(missing)} observed genes not predicted "
            f"(e.g. {', '.join(map(repr, missing[:5]))}), {len(extra)} predicted genes not observed "
            f"(e.g. {', '.join(map(repr, extra[:5]))}). Predict the same genes, or subset both to the shared ones."
        )
    return predicted[:, genes]  # same set, other order: align by name


def _level(pred: ad.AnnData, level: str) -> str:
    """Whether predictions are cells or one row per condition; refuse a pseudobulk with duplicated conditions."""
    if level not in LEVELS:
        raise VclibInputError(f"predicted_level={level!r} is not one of {', '.join(map(repr, LEVELS))}.")
    sizes = pred.obs.groupby([CONTEXT_KEY, PERTURBATION_KEY], observed=True).size()
    several = sizes[sizes > 1]
    if level == "cells" or (level == "auto" and len(several) and sizes.median() > 1):
        return "cells"
    if len(several):
        shown = ", ".join(repr(condition_id(c, p)) for c, p in several.index[:5])
        raise VclibInputError(
            f"{len(several)} predicted condition(s) have more than one row ({shown}) while "
            f"{int((sizes == 1).sum())} have one: a pseudobulk prediction needs one row per condition. Drop the "
            "duplicates, or pass predicted_level='cells' if these rows are predicted cells."
        )
    return "pseudobulk"


def evaluate(
    predicted: ad.AnnData,
    observed: ad.AnnData | Observed,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str | None = CONTEXT_KEY,
    control: str = CONTROL,
    conditions: list[str] | None = None,
    metrics: list[str] | None = None,
    reference: str = "control",
    predicted_control: str = "observed",
    exclude: str | list[str] | None = "targets",
    ties: str = "mid",
    top_genes: int = 1000,
    top_de: int = 20,
    top_r2: int = 100,
    fdr: float = 0.05,
    epsilon: float = 1e-9,
    hit_k: int = 10,
    hit_min_de: int = 10,
    no_de: float = np.nan,
    observed_de: DEResult | None = None,
    de_options: dict | None = None,
    predicted_level: str = "auto",
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
        Observed cells (log1p) with control cells in every context, or an :class:`Observed` from
        :func:`prepare` (then nothing observed is recomputed; its keys and DE settings are used).
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
        Genes left out of the PDS and rank distances: ``"targets"`` (default: the union of the target genes of
        the context's scored perturbations, left out of every distance, so a constant predictor scores exactly
        0.5 and no prediction gains by predicting its own target's knockdown), ``"own"`` (each query's own
        targets only, as cell-eval; a constant predictor's score then depends on the data), a list (a panel
        left out everywhere), or None.
    ties
        PDS ties: ``"mid"`` (half each; constant predictor = 0.5) or ``"position"`` (cell-eval 0.8.2).
    top_genes
        Number of most expressed control genes for ``l2_top_genes``.
    top_de
        Number of most significant observed DE genes for ``pearson_delta_top_de``.
    top_r2
        Number of genes of largest observed |delta| for ``r2_mean_top100``.
    fdr, epsilon
        FDR threshold of DE genes and lfc pseudocount.
    hit_k, hit_min_de
        ``hit_rate_at_k``: k, and the observed DE genes that make a perturbation a hit.
    no_de
        ``overlap_at_N`` / ``precision_at_N`` of a condition without observed DE genes: NaN (undefined, the
        default) or 0 (cell-eval's convention).
    observed_de
        DE of the observed cells from :func:`rank_genes`, to compute it once for many models (or pass an
        :class:`Observed`).
    de_options
        Passed to :func:`rank_genes` (``tie_correction``, ``continuity``).
    predicted_level
        ``"auto"`` (one row per condition: pseudobulk; several: cells), ``"cells"`` or ``"pseudobulk"``. A
        pseudobulk in which some conditions appear twice is refused (naming them) rather than read as cells.
    model, split
        Added as columns when given.

    Returns
    -------
    DataFrame with columns ``context``, ``perturbation``, ``metric``, ``value`` and ``note`` (why a value is
    undefined; empty where it is defined) (+ ``model``, ``split``). ``hit_rate_at_k`` has one row per context
    with perturbation ``"*"``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_genes=60, cells_per_condition=30)
    >>> perfect = vc.pseudobulk.pseudobulk(adata)
    >>> table = vc.metrics.evaluate(perfect, adata, metrics=["mse", "discrimination_score_l1"])
    >>> table.groupby("metric")["value"].mean().to_dict()
    {'discrimination_score_l1': 1.0, 'mse': 0.0}
    """
    options = {name: value for name, value in locals().items() if name not in ("predicted", "observed")}
    with _ordinary_pages():
        return _Evaluation(predicted, observed, **options).run()


@contextmanager
def _ordinary_pages():
    """numpy's new arrays on ordinary memory pages inside the block, not transparent huge pages, which numpy
    requests for every large array (its ``NUMPY_MADVISE_HUGEPAGE``); restored after. evaluate allocates many
    short-lived 10-100 MB arrays, and where the kernel backs a huge page slowly (this project's VMs: ~17 ms each,
    236 of them took ~4 s of a 7 s scoring process) that dominated a first call; ordinary pages cost a few ms.
    Only where memory comes from changes, no value."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:  # a numpy without the switch (it is private): memory as numpy decides
            yield
            return
    previous = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(previous)


# every keyword option of evaluate() with its default
EVALUATE_DEFAULTS = {name: p.default for name, p in inspect.signature(evaluate).parameters.items()
                     if p.kind is p.KEYWORD_ONLY}


class _Evaluation:
    """One :func:`evaluate` call in two steps: everything checked and the predictions pseudobulked at construction
    (cheap, so bad input fails before any DE runs), then :meth:`run` computes the DE and the metrics, naming each
    stage it starts to ``stage`` (a progress bar's hook). ``_Evaluation(pred, obs, **options).run()`` is
    ``evaluate(pred, obs, **options)``.

    Attributes
    ----------
    observed
        The :class:`Observed` scored against.
    names
        The ``"context|perturbation"`` ids scored.
    metrics
        The metrics asked for.
    stages
        The stages :meth:`run` will name, in order.
    """

    def __init__(self, predicted: ad.AnnData, observed: ad.AnnData | Observed, **options):
        unknown = sorted(set(options) - set(EVALUATE_DEFAULTS))
        if unknown:
            raise VclibInputError(f"unknown option(s) {unknown} of evaluate; options: {', '.join(EVALUATE_DEFAULTS)}.")
        o = {**EVALUATE_DEFAULTS, **options}
        self.metrics = check_metrics(o["metrics"])
        _check_options(reference=o["reference"], predicted_control=o["predicted_control"], exclude=o["exclude"],
                       ties=o["ties"])
        self.wants_de = any(m in DE_METRICS for m in self.metrics)
        if isinstance(observed, Observed) and self.wants_de:
            observed.check_de_options(o["epsilon"], o["de_options"])
        self.observed = prepare(observed, perturbation_key=o["perturbation_key"], context_key=o["context_key"],
                                control=o["control"], epsilon=o["epsilon"], de_options=o["de_options"],
                                de=o["observed_de"])
        pred = _align_genes(in_contract(predicted, o["perturbation_key"], o["context_key"], o["control"],
                                        side="predicted"), self.observed.var_names)
        check_values(pred, "predicted")
        self.level = _level(pred, o["predicted_level"])
        self.cells = pred
        self.pseudobulk = pbk.pseudobulk(pred)
        self.names = _conditions_to_score(self.pseudobulk, self.observed.pseudobulk, o["conditions"])
        self.options = o

    @property
    def stages(self) -> list[str]:
        de = [] if not self.wants_de else ["DE of the observed cells"] * ("de" not in self.observed.__dict__) + \
            ["DE of the predicted cells"] * (self.level == "cells")
        return [*de, "metrics"]

    def run(self, stage=None) -> pd.DataFrame:
        """The :func:`evaluate` table; ``stage(name)`` is called as each of :attr:`stages` starts."""
        stage = stage or (lambda name: None)
        o = self.options
        pred_de = None
        for name in self.stages:
            stage(name)
            if name == "DE of the observed cells":
                self.observed.de  # noqa: B018 (computed on first use, then kept)
            elif name == "DE of the predicted cells":
                cells = self.cells
                if o["predicted_control"] == "observed":
                    cells = ad.concat([cells[cells.obs[PERTURBATION_KEY] != CONTROL], self.observed.controls],
                                      merge="same", uns_merge="same")
                pred_de = rank_genes(cells, epsilon=o["epsilon"], **(o["de_options"] or {}))
        table = score(self.pseudobulk, self.observed, self.names, self.metrics, pred_de=pred_de,
                      **{k: o[k] for k in SCORING_DEFAULTS})
        for label in ("model", "split"):
            if o[label] is not None:
                table[label] = o[label]
        return table


def check_metrics(metrics) -> list[str]:
    """The metric names asked for (all by default), refusing unknown ones."""
    metrics = list(REGISTRY) if metrics is None else list(metrics)
    unknown = [m for m in metrics if m not in REGISTRY]
    if unknown:
        raise VclibInputError(f"unknown metric(s) {unknown}; valid: {', '.join(REGISTRY)}.")
    return metrics


def _check_options(*, reference, predicted_control, exclude, ties) -> dict:
    if reference not in ("control", "perturbed_centroid"):
        raise VclibInputError(f"reference={reference!r} is not 'control' or 'perturbed_centroid'.")
    if predicted_control not in ("observed", "predicted"):
        raise VclibInputError(f"predicted_control={predicted_control!r} is not 'observed' or 'predicted'.")
    if isinstance(exclude, str) and exclude not in EXCLUDE:
        raise VclibInputError(f"exclude={exclude!r} is not one of {EXCLUDE}, a list of genes, or None.")
    if ties not in ("mid", "position"):
        raise VclibInputError(f"ties={ties!r} is not 'mid' or 'position'.")
    return {"reference": reference, "predicted_control": predicted_control, "exclude": exclude, "ties": ties}


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
    conditions = list(conditions)
    if not conditions:
        raise VclibInputError("conditions= is empty: give at least one 'context|perturbation' to score.")
    for side, have in (("predicted", set(predicted)), ("observed", set(observed))):
        missing = [c for c in conditions if c not in have]
        if missing:
            raise VclibInputError(f"condition(s) {', '.join(map(repr, missing[:8]))} not in the {side} data.")
    return conditions


def _rows(pb: ad.AnnData, names) -> np.ndarray:
    return np.asarray(pb.X, dtype=np.float64)[pb.obs_names.get_indexer(list(names))]


def _control_rows(pb: ad.AnnData, contexts: np.ndarray, side: str) -> np.ndarray:
    """Each row's context control pseudobulk."""
    missing = sorted({c for c in contexts if f"{c}|{CONTROL}" not in pb.obs_names})
    if missing:
        raise VclibInputError(f"no {side} control for context(s) {missing}" + (
            "; predicted_control='predicted' needs the predicted control cells or row." if side == "predicted"
            else "."))
    return _rows(pb, [f"{c}|{CONTROL}" for c in contexts])


def _perturbed_centroid(obs_pb: ad.AnnData, contexts: np.ndarray) -> np.ndarray:
    """Each row's context mean over all observed perturbed pseudobulks (Systema's perturbed centroid)."""
    X = np.asarray(obs_pb.X, dtype=np.float64)
    perturbed = ~obs_pb.obs["is_control"].to_numpy()
    ctx = obs_pb.obs[CONTEXT_KEY].astype(str).to_numpy()
    centroid = {c: X[perturbed & (ctx == c)].mean(axis=0) for c in np.unique(contexts)}
    return np.vstack([centroid[c] for c in contexts])


def _kept_genes(perts, exclude, gene_index: dict, n_genes: int) -> np.ndarray:
    """Genes every distance of one context uses (all but the excluded panel)."""
    panel = set()
    if exclude == "targets":
        panel = {gene_index[t] for p in perts for t in targets(p) if t in gene_index}
    elif exclude is not None and exclude != "own":
        panel = {gene_index[g] for g in exclude if g in gene_index}
    return np.setdiff1d(np.arange(n_genes), np.fromiter(panel, dtype=np.int64, count=len(panel)))


def _constant_rows(A: np.ndarray) -> np.ndarray:
    return np.ptp(A, axis=1) == 0 if A.shape[1] else np.ones(len(A), dtype=bool)


def _why_correlation_undefined(pred: np.ndarray, obs: np.ndarray) -> np.ndarray:
    return np.where(_constant_rows(pred), "the predicted values are constant (e.g. the prediction is the reference)",
                    np.where(_constant_rows(obs), "the observed values are constant", ""))


SCORING_DEFAULTS = {"reference": "control", "predicted_control": "observed", "exclude": "targets", "ties": "mid",
                    "top_genes": 1000, "top_de": 20, "top_r2": 100, "fdr": 0.05, "epsilon": 1e-9, "hit_k": 10,
                    "hit_min_de": 10, "no_de": np.nan}

# cell-eval 0.8.2's conventions, for parity with it: vc.metrics.evaluate(pred, real, **CELL_EVAL) on files in its
# layout (obs "target_gene", control "non-targeting", one context). benchmarks/parity_cell_eval.py checks it.
CELL_EVAL = {"perturbation_key": "target_gene", "context_key": None, "control": "non-targeting",
             "predicted_control": "predicted", "ties": "position", "epsilon": 0.0, "exclude": "own", "no_de": 0.0}


def score(pred_pb: ad.AnnData, obs: Observed, names: list[str], metrics: list[str], *,
          pred_de: DEResult | None = None, **options) -> pd.DataFrame:
    """The metric arithmetic of :func:`evaluate` on a predicted pseudobulk (and the DE of predicted cells, if
    any) against a prepared observation: nothing observed is recomputed here. ``options`` are :func:`evaluate`'s
    scoring options (:data:`SCORING_DEFAULTS`)."""
    unknown = sorted(set(options) - set(SCORING_DEFAULTS))
    if unknown:
        raise VclibInputError(f"unknown scoring option(s) {unknown}; options: {', '.join(SCORING_DEFAULTS)}.")
    o = {**SCORING_DEFAULTS, **options}
    _check_options(reference=o["reference"], predicted_control=o["predicted_control"], exclude=o["exclude"],
                   ties=o["ties"])
    reference, predicted_control, exclude, ties = o["reference"], o["predicted_control"], o["exclude"], o["ties"]
    obs_pb = obs.pseudobulk
    contexts = obs_pb.obs[CONTEXT_KEY].astype(str).to_numpy()[obs_pb.obs_names.get_indexer(names)]
    perts = obs_pb.obs[PERTURBATION_KEY].astype(str).to_numpy()[obs_pb.obs_names.get_indexer(names)]
    obs_ctrl = _control_rows(obs_pb, contexts, "observed")
    pred_ctrl = _control_rows(pred_pb, contexts, "predicted") if predicted_control == "predicted" else obs_ctrl
    pb_pred, pb_obs = _rows(pred_pb, names), _rows(obs_pb, names)
    if reference == "control":
        ref_obs, ref_pred = obs_ctrl, pred_ctrl
    else:
        ref_obs = ref_pred = _perturbed_centroid(obs_pb, contexts)
    dP, dO = pb_pred - ref_pred, pb_obs - ref_obs

    values: dict[str, np.ndarray] = {}
    notes: dict[str, np.ndarray] = {}
    simple = {"mse": lambda: fn.mse(pb_pred, pb_obs), "mae": lambda: fn.mae(pb_pred, pb_obs),
              "mse_delta": lambda: fn.mse(dP, dO), "mae_delta": lambda: fn.mae(dP, dO)}
    for m in metrics:
        if m in simple:
            values[m] = simple[m]()
    for m, (a, b) in {"pearson_delta": (dP, dO), "cosine_delta": (dP, dO), "r2_mean": (pb_pred, pb_obs)}.items():
        if m in metrics:
            values[m] = fn.cosine(a, b) if m == "cosine_delta" else fn.pearson(a, b) ** (2 if m == "r2_mean" else 1)
            notes[m] = _why_correlation_undefined(a, b)
    if "r2_mean_top100" in metrics:
        top = _top_k(np.abs(pb_obs - obs_ctrl), min(o["top_r2"], pb_obs.shape[1]))
        values["r2_mean_top100"] = fn.pearson(pb_pred, pb_obs, mask=top) ** 2
        notes["r2_mean_top100"] = np.full(len(names), "the predicted or observed values are constant on these genes")
    if "l2_top_genes" in metrics:
        values["l2_top_genes"] = np.empty(len(names))
        for ctx in np.unique(contexts):
            rows = contexts == ctx
            genes = fn.top_expressed(obs_ctrl[np.flatnonzero(rows)[0]], k=o["top_genes"])
            values["l2_top_genes"][rows] = fn.l2(pb_pred[rows], pb_obs[rows], genes=genes)
    _ranking_metrics(values, notes, metrics, dP, dO, contexts, perts, exclude=exclude, ties=ties,
                     gene_index={g: i for i, g in enumerate(obs.var_names)})
    table = _long(contexts, perts, values, notes)
    if any(m in DE_METRICS for m in metrics):
        table = pd.concat([table, _de_metrics(
            pred_pb, pred_de, obs, names, metrics, pred_ctrl=pred_ctrl, dP=dP, dO=dO, fdr=o["fdr"],
            epsilon=o["epsilon"], top_de=o["top_de"], hit_k=o["hit_k"], hit_min_de=o["hit_min_de"],
            no_de=o["no_de"])], ignore_index=True)
    return table


def _ranking_metrics(values, notes, metrics, dP, dO, contexts, perts, *, exclude, ties, gene_index) -> None:
    """PDS (three distances) and the rank metric, per context. One distance matrix per (context, distance): the
    L1 matrix serves both PDS and the rank metric, on the genes left after the exclusion, and skips the pairs
    that neither needs (``_l1_for_ranks``)."""
    wanted = [m for m in metrics if m.startswith("discrimination_score_") or m == "rank"]
    for m in wanted:
        values[m] = np.full(len(contexts), np.nan)
        notes[m] = np.full(len(contexts), "", dtype=object)
    for ctx in np.unique(contexts) if wanted else []:
        rows = np.flatnonzero(contexts == ctx)
        if len(rows) < 2:
            for m in wanted:
                notes[m][rows] = "one perturbation in its context: nothing to tell it apart from"
            continue
        keep = _kept_genes(perts[rows], exclude, gene_index, dP.shape[1])
        own = ([[gene_index[t] for t in targets(p) if t in gene_index] for p in perts[rows]]
               if exclude == "own" else None)
        p, o = dP[rows][:, keep], dO[rows][:, keep]
        for distance in ("l1", "l2", "cosine"):
            name = f"discrimination_score_{distance}"
            if name not in wanted and not (distance == "l1" and "rank" in wanted):
                continue
            n = len(rows)
            full = (fn._l1_for_ranks(p, o, exclude=own, rows=name in wanted, cols="rank" in wanted)
                    if distance == "l1" else None)
            if name in wanted:
                D = fn.prediction_distances(p, o, distance=distance, exclude=own, full=full)
                values[name][rows] = 1 - fn._rank_of_diagonal(D, ties=ties) / ((n - 1) if ties == "mid" else n)
            if full is not None and "rank" in wanted:
                values["rank"][rows] = fn._rank_of_diagonal(full.T, ties="mid") / (n - 1)


def _long(contexts, perts, values: dict[str, np.ndarray], notes: dict[str, np.ndarray] | None = None
          ) -> pd.DataFrame:
    """Long table from per-row arrays, one block of rows per metric; ``note`` says why a value is undefined."""
    names = list(values)
    notes = notes or {}
    value = np.concatenate([values[m] for m in names]).astype(np.float64) if names else np.zeros(0)
    note = np.concatenate([np.asarray(notes.get(m, np.full(len(values[m]), "")), dtype=object)
                           for m in names]) if names else np.zeros(0, dtype=object)
    note = np.where(np.isfinite(value), "", np.where(note == "", "undefined", note))
    return pd.DataFrame({
        CONTEXT_KEY: np.tile(np.asarray(contexts, dtype=object), len(names)),
        PERTURBATION_KEY: np.tile(np.asarray(perts, dtype=object), len(names)),
        "metric": np.repeat(np.asarray(names, dtype=object), len(contexts)),
        "value": value,
        "note": note.astype(object),
    })


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean rows × genes: each row's ``k`` largest (finite) values, ties by gene order, as the first ``k`` of a
    stable descending sort; a partition finds them in a fifth of that sort's time."""
    if k == 0:
        return np.zeros(values.shape, dtype=bool)
    kth = -np.partition(-values, k - 1, axis=1)[:, k - 1 : k]  # each row's k-th largest value
    above, tied = values > kth, values == kth
    return above | (tied & (np.cumsum(tied, axis=1) <= k - above.sum(axis=1, keepdims=True)))


def _top_abs(lfc: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Boolean rows × genes: each row's ``n[i]`` genes of largest |lfc| (ties by gene order)."""
    out = np.zeros(lfc.shape, dtype=bool)
    for i, k in enumerate(n):
        out[i, np.argsort(-np.abs(lfc[i]).astype(np.float32), kind="stable")[:k]] = True
    return out


def _de_metrics(pred_pb, pred_de, obs: Observed, names, metrics, *, pred_ctrl, dP, dO, fdr, epsilon, top_de,
                hit_k, hit_min_de, no_de) -> pd.DataFrame:
    obs_de = obs.de.subset(names)
    obs_sig = obs_de.significant(fdr)
    n_sig = obs_sig.sum(axis=1)
    if pred_de is not None:
        pred_de = pred_de.subset(names)
        pred_lfc, pred_sig, top_obs = pred_de.lfc, pred_de.significant(fdr), obs_sig
    else:
        # Pseudobulk predictions have no p-values: both sides then rank all genes by |lfc| and keep the top N,
        # N = number of observed DE genes, so a perfect prediction scores 1.
        pred_lfc = log2_fold_change(_rows(pred_pb, names), pred_ctrl, epsilon=epsilon)
        pred_sig, top_obs = _top_abs(pred_lfc, n_sig), _top_abs(obs_de.lfc, n_sig)
    contexts = obs_de.conditions[CONTEXT_KEY].astype(str).to_numpy()
    perts = obs_de.conditions[PERTURBATION_KEY].astype(str).to_numpy()
    no_gene = np.where(n_sig == 0, f"no observed DE gene (FDR < {fdr})", "")
    few_genes = np.where(n_sig < 2, f"fewer than 2 observed DE genes (FDR < {fdr})", "")
    values, notes = {}, {}
    if "pearson_delta_top_de" in metrics:
        top = np.zeros_like(obs_sig)
        for i in range(len(names)):
            sig = np.flatnonzero(obs_sig[i])
            top[i, sig[np.argsort(obs_de.pvalue[i, sig], kind="stable")[:top_de]]] = True
        values["pearson_delta_top_de"] = np.where(top.sum(axis=1) >= 2, fn.pearson(dP, dO, mask=top), np.nan)
        notes["pearson_delta_top_de"] = few_genes
    if "overlap_at_N" in metrics:
        values["overlap_at_N"] = fn.de_overlap(pred_lfc, pred_sig, obs_de.lfc, top_obs, no_de=no_de)
        notes["overlap_at_N"] = no_gene
    if "precision_at_N" in metrics:
        values["precision_at_N"] = fn.de_precision(pred_lfc, pred_sig, obs_de.lfc, top_obs, no_de=no_de)
        notes["precision_at_N"] = no_gene
    if "de_direction_match" in metrics:
        values["de_direction_match"] = fn.de_direction(pred_lfc, obs_de.lfc, obs_sig)
        notes["de_direction_match"] = no_gene
    if "de_spearman_lfc_sig" in metrics:
        values["de_spearman_lfc_sig"] = fn.de_spearman(pred_lfc, obs_de.lfc, obs_sig)
        notes["de_spearman_lfc_sig"] = np.where(n_sig < 2, few_genes, "the lfc are constant on the DE genes")
    table = _long(contexts, perts, values, notes)
    if "hit_rate_at_k" in metrics:
        effect = np.linalg.norm(dP, axis=1)
        hits = n_sig >= hit_min_de
        per_context = np.unique(contexts)
        rates, why = np.full(len(per_context), np.nan), np.full(len(per_context), "", dtype=object)
        for i, c in enumerate(per_context):
            rows = contexts == c
            if rows.sum() < 2:
                why[i] = "one perturbation in the context: nothing to rank"
            elif not hits[rows].any():
                why[i] = f"no real hit in the context (no perturbation with >= {hit_min_de} observed DE genes)"
            else:
                rates[i] = fn.hit_rate_at_k(effect[rows], hits[rows], k=hit_k)
        table = pd.concat([table, _long(per_context, [ALL_CONDITIONS] * len(per_context), {"hit_rate_at_k": rates},
                                        {"hit_rate_at_k": why})], ignore_index=True)
    return table
