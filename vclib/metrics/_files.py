"""Score a prediction file against observed cells into a folder of tables: what ``vclib evaluate`` runs.

:func:`evaluate_files` reads a prediction and the observation (h5ad, in any layout; cell-eval's with
``parity="cell-eval"``), scores the prediction with :func:`evaluate`, puts a baseline beside it and the noise
ceiling above it, and writes the per-condition and aggregated tables (bootstrap CIs), the calibrated scores, what
could not apply and why, and a record of the command. Nothing is written until everything is computed, and a
folder holding files vclib did not write, or an earlier finished evaluation, is refused.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vclib import __version__
from vclib import pseudobulk as pbk
from vclib.metrics._evaluate import (
    CELL_EVAL,
    EVALUATE_DEFAULTS,
    SCORING_DEFAULTS,
    Observed,
    _Evaluation,
    _ordinary_pages,
)
from vclib.metrics._summary import CEILING, aggregate, beyond_ceiling, calibrate, ceiling, predict_control
from vclib.report import COLUMNS as NOTE_COLUMNS
from vclib.report import SKIPPED_FILE
from vclib.schema import (
    CONTEXT_KEY,
    CONTROL,
    COUNTS,
    PERTURBATION_KEY,
    VclibInputError,
    check_genes,
    detect_values,
    normalise,
)

PREDICTION = "prediction"
CONTEXT_MEAN = "context_mean"
NO_CHANGE = "no_change"
BASELINES = (CONTEXT_MEAN, NO_CHANGE)
# metrics that compare a condition's prediction with the other conditions' observations (or predictions)
COMPARES_CONDITIONS = ("discrimination_score_l1", "discrimination_score_l2", "discrimination_score_cosine", "rank",
                       "hit_rate_at_k")
PARITIES = {"cell-eval": CELL_EVAL}
RECORD_FILE = "evaluate.json"
OUTPUTS = {
    "scores.csv": "the prediction's score per condition: one row per context x perturbation x metric",
    "baseline_scores.csv": "the same for the baseline",
    "ceiling_scores.csv": "the same for the noise ceiling (half of the observed cells scored against the other "
                          "half, corrected to a noise-free predictor)",
    "summary.csv": "mean of each metric for the prediction, the baseline and the ceiling, with bootstrap 95% CIs "
                   "over perturbations",
    "calibrated.csv": "the prediction's calibrated score per metric, (u - b)/(c - b): 0 = the baseline, 1 = the "
                      "ceiling; or why it is not calibratable",
    SKIPPED_FILE: "what could not apply to this data, and what was adjusted, one sentence each",
    RECORD_FILE: "the command, the options, the inputs, the versions and the time of each stage",
}
CALIBRATED_COLUMNS = ["model", "metric", "mean", "n", "baseline_mean", "ceiling_mean", "span", "span_low",
                      "span_high", "calibrated", "calibration_note"]
_SCORE_COLUMNS = ["model", CONTEXT_KEY, PERTURBATION_KEY, "metric", "value", "note"]


@dataclass
class Scorecard:
    """What :func:`evaluate_files` computed (and wrote to ``out_dir``).

    Attributes
    ----------
    scores, baseline, ceiling
        Per-condition tables (:func:`evaluate` columns plus ``model``) of the prediction, the baseline and the noise
        ceiling; empty (with their columns) where there is none.
    summary
        :func:`aggregate` of the three by ``model`` and ``metric``: mean, bootstrap 95% CI, n.
    calibrated
        :func:`calibrate` of the prediction per metric, or one row per metric with the reason in
        ``calibration_note``.
    notes
        What was skipped or adjusted (``kind``, ``analysis``, ``reason``), as :func:`vclib.report.record` keeps it.
    record
        The command, options, inputs, versions and timings (``evaluate.json``).
    out_dir
        The folder written, or None.
    """

    scores: pd.DataFrame
    baseline: pd.DataFrame
    ceiling: pd.DataFrame
    summary: pd.DataFrame
    calibrated: pd.DataFrame
    notes: pd.DataFrame
    record: dict = field(repr=False)
    out_dir: Path | None = None

    def headline(self) -> pd.DataFrame:
        """One row per metric: the prediction's mean and 95% CI, the baseline's and the ceiling's means, the
        calibrated score, and why a number is missing (``note``)."""
        s = self.summary.set_index(["model", "metric"])
        model = self.record["options"]["model"]
        base = self.record["baseline"]["name"]
        metrics = list(dict.fromkeys(self.scores["metric"]))
        rows = []
        cal = self.calibrated.set_index("metric")
        for m in metrics:
            own = s.loc[(model, m)] if (model, m) in s.index else None
            rows.append({
                "metric": m,
                "mean": own["mean"] if own is not None else np.nan,
                "ci_low": own["ci_low"] if own is not None else np.nan,
                "ci_high": own["ci_high"] if own is not None else np.nan,
                "n": int(own["n"]) if own is not None else 0,
                "baseline": s.loc[(base, m), "mean"] if (base, m) in s.index else np.nan,
                "ceiling": s.loc[(CEILING, m), "mean"] if (CEILING, m) in s.index else np.nan,
                "calibrated": cal.loc[m, "calibrated"] if m in cal.index else np.nan,
                "note": "; ".join(t for t in (own["note"] if own is not None else "",
                                              cal.loc[m, "calibration_note"] if m in cal.index else "") if t),
            })
        return pd.DataFrame(rows)


def predict_context_mean(observed: ad.AnnData | Observed, conditions: list[str] | None = None, *,
                         leave_out: bool = True) -> ad.AnnData:
    """Pseudobulk "prediction" of each perturbation as the mean pseudobulk of the perturbations of its context: the
    context mean baseline (:class:`vclib.baselines.ContextMean`) fitted on the observed perturbations.

    Parameters
    ----------
    observed
        Observed cells in the data contract, or an :class:`Observed` (:func:`prepare`).
    conditions
        ``"context|perturbation"`` ids to predict (default every observed perturbed condition). Conditions alone
        in their context have no other perturbation to average and are left out of the result.
    leave_out
        True: each perturbation's mean leaves it out (the mean of the *other* perturbations, so its prediction is
        independent of its own cells: the training mean with N − 1 training perturbations). False: one mean of all
        the context's perturbations, the same answer for each (a constant predictor).

    Returns
    -------
    One row per predictable condition (obs ``context``, ``perturbation``), plus every context's observed control.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=1, n_perturbations=3, n_combinations=0, n_genes=20,
    ...                             cells_per_condition=5, control_cells=10)
    >>> pred = vc.metrics.predict_context_mean(adata)
    >>> pb = vc.pseudobulk.pseudobulk(adata)
    >>> bool(abs(pred["C1|G0000"].X - (pb["C1|G0001"].X + pb["C1|G0002"].X) / 2).max() < 1e-12)
    True
    """
    pb = observed.pseudobulk if isinstance(observed, Observed) else pbk.pseudobulk(observed)
    X = np.asarray(pb.X, dtype=np.float64)
    contexts = pb.obs[CONTEXT_KEY].astype(str).to_numpy()
    perturbed = ~pb.obs["is_control"].to_numpy()
    wanted = set(pb.obs_names[perturbed] if conditions is None else conditions)
    rows, names = [], []
    for ctx in dict.fromkeys(contexts[perturbed]):
        members = perturbed & (contexts == ctx)
        n = int(members.sum())
        if n < 2:
            continue
        total = X[members].sum(axis=0)
        for name in [c for c in pb.obs_names[members] if c in wanted]:
            rows.append((total - X[pb.obs_names.get_loc(name)]) / (n - 1) if leave_out else total / n)
            names.append(name)
    return _with_controls(pb, np.vstack(rows) if rows else np.zeros((0, pb.n_vars)), names)


def _with_controls(pb: ad.AnnData, X: np.ndarray, names: list[str]) -> ad.AnnData:
    """A pseudobulk prediction in the data contract: ``X`` for the conditions ``names``, and every context's
    observed control row (for ``predicted_control="predicted"``)."""
    controls = pb[pb.obs["is_control"].to_numpy()]
    obs = pd.concat([pb.obs.loc[names, [CONTEXT_KEY, PERTURBATION_KEY]], controls.obs[[CONTEXT_KEY, PERTURBATION_KEY]]])
    return ad.AnnData(X=np.vstack([X, np.asarray(controls.X, dtype=np.float64)]), obs=obs.astype(str),
                      var=pd.DataFrame(index=pb.var_names.copy()), uns={"vclib": {"values": "log1p"}})


def _read(data, role: str) -> tuple[ad.AnnData, dict]:
    """An h5ad file (or AnnData) and what the record says about it; unreadable input named with its role."""
    if isinstance(data, ad.AnnData):
        return data, {"path": None, "cells": data.n_obs, "genes": data.n_vars}
    path = Path(data)
    if not path.is_file():
        raise VclibInputError(f"{role} file {str(path)!r} does not exist" + (" (it is a folder)" if path.is_dir()
                                                                              else "") + ".")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # h5py/anndata raise many types for corrupt, truncated or foreign files
        raise VclibInputError(f"cannot read {role} file {str(path)!r} as h5ad ({type(err).__name__}: {err}). Is the "
                              "file complete and written by anndata (adata.write_h5ad)?") from err
    stat = path.stat()
    return adata, {"path": str(path.resolve()), "bytes": stat.st_size,
                   "modified": datetime.fromtimestamp(stat.st_mtime).isoformat(timespec="seconds"),
                   "cells": adata.n_obs, "genes": adata.n_vars}


def _as_log1p(adata: ad.AnnData, role: str, notes: list) -> ad.AnnData:
    """Raw counts normalised as :func:`vclib.loaders.read` normalises them (a user's screen file usually holds
    counts; the metrics compare log1p values), on a copy, with a note; other values as they are."""
    if adata.n_obs == 0 or detect_values(adata.X) != COUNTS:
        return adata
    out = adata.copy()
    normalise(out)
    notes.append(_entry("note", f"{role} values", "raw counts, normalised to 10,000 per cell and log1p-transformed "
                                                  "(as vc.loaders.read does) before scoring"))
    return out


def _check_layout(adata: ad.AnnData, role: str, *, options: dict, parity: str | None, needs_control: bool) -> None:
    """The obs columns, the control label and unique gene names of one input, named with its role and the fix."""
    keys = [options["perturbation_key"]] + ([options["context_key"]] if options["context_key"] else [])
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        hint = ""
        if options["context_key"] and options["perturbation_key"] in adata.obs.columns:
            hint = " For data of a single context pass context_key=None."
        elif parity is None and CELL_EVAL["perturbation_key"] in adata.obs.columns:
            hint = (f" The {role} has cell-eval's column {CELL_EVAL['perturbation_key']!r}: parity='cell-eval' reads "
                    "that layout.")
        raise VclibInputError(
            f"the {role} has no obs column {', '.join(map(repr, missing))}; columns present: "
            f"{', '.join(map(repr, adata.obs.columns)) or '(none)'}. Name its columns with perturbation_key= and "
            f"context_key=.{hint}")
    try:
        check_genes(adata.var_names)
    except VclibInputError as err:
        raise VclibInputError(f"the {role}: {err}") from None
    labels = adata.obs[options["perturbation_key"]].astype(str)
    if needs_control and not (labels == options["control"]).any():
        seen = pd.unique(labels)
        raise VclibInputError(
            f"the {role} has no cell labelled {options['control']!r} in obs[{options['perturbation_key']!r}] (labels "
            f"seen: {', '.join(map(repr, seen[:8]))}{', ...' if len(seen) > 8 else ''}). Name the control label with "
            "control=" + (" (cell-eval's files: parity='cell-eval')." if parity is None else ".")
            + (" A prediction without control cells needs predicted_control='observed'." if role == "prediction"
               else ""))


def _check_out_dir(out_dir: Path) -> None:
    """Refuse a folder vclib would have to overwrite: one holding files vclib did not write, or the results of an
    earlier finished evaluation. A new folder, an empty one, or an interrupted evaluation's folder is fine."""
    if out_dir.exists() and not out_dir.is_dir():
        raise VclibInputError(f"out_dir= {str(out_dir)!r} is a file; pass a new or empty folder.")
    present = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if not present:
        return
    try:
        record = json.loads((out_dir / RECORD_FILE).read_text())
        ours = record.get("command_name") == "evaluate"
    except (OSError, ValueError, AttributeError):
        record, ours = {}, False
    foreign = [p for p in present if p not in OUTPUTS]
    if not ours or foreign:
        shown = foreign or present
        raise VclibInputError(
            f"out_dir= {str(out_dir)!r} holds files vclib evaluate did not write ({', '.join(shown[:5])}"
            f"{', ...' if len(shown) > 5 else ''}); vclib never replaces files it did not create. Pass a new or "
            "empty folder as out_dir=.")
    if record.get("status") == "complete":
        raise VclibInputError(
            f"out_dir= {str(out_dir)!r} holds the results of an earlier vclib evaluate (finished "
            f"{record.get('finished', '?')}); vclib never overwrites results. Pass a new folder as out_dir= (or delete "
            "that one).")


def _resolve(parity: str | None, options: dict) -> dict:
    """evaluate's options: its defaults, then the parity's conventions, then the options given."""
    if parity is not None and parity not in PARITIES:
        raise VclibInputError(f"parity={parity!r} is not one of {', '.join(map(repr, PARITIES))} (or None).")
    allowed = [k for k in EVALUATE_DEFAULTS if k != "split"]  # one prediction is scored: no split label
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise VclibInputError(f"unknown option(s) {unknown}; evaluate's options here are {', '.join(allowed)}.")
    return {**EVALUATE_DEFAULTS, **(PARITIES[parity] if parity else {}), **options}


class _Stages:
    """A progress bar naming the stage running, and the seconds each stage took."""

    def __init__(self, planned: int, enabled: bool):
        self.bar = tqdm(total=planned, disable=not enabled, leave=False, unit="stage", dynamic_ncols=True,
                        bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} [{elapsed}]")
        self.seconds: dict[str, float] = {}
        self.current: str | None = None
        self.started = time.perf_counter()

    def __call__(self, name: str) -> None:
        self._finish()
        self.current = name
        self.bar.set_description_str(name)

    def plan(self, more: int) -> None:
        self.bar.total = self.bar.n + 1 + more
        self.bar.refresh()

    def _finish(self) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.seconds[self.current] = round(self.seconds.get(self.current, 0.0) + now - self.started, 3)
            self.bar.update(1)
        self.started = now

    def close(self) -> None:
        self._finish()
        self.current = None
        self.bar.close()


def _entry(kind: str, analysis: str, reason: str) -> dict:
    return {"notebook": "evaluate", "kind": kind, "analysis": analysis, "reason": reason}


def _baseline_evaluations(baseline, raw, where: str, obs: Observed, job: _Evaluation, options: dict, parity,
                          notes: list) -> tuple[str | None, list[_Evaluation]]:
    """The baseline's name and its evaluations on the prediction's conditions (none without a baseline). The
    context mean is two: left one out for the metrics that compare a prediction with its own observation only, one
    mean of all for those that compare it with the other conditions (see :func:`evaluate_files`)."""
    if baseline is None:
        notes.append(_entry("skipped", "calibrated scores", "no baseline was asked for (baseline=None); a calibrated "
                            "score needs one"))
        return None, []
    contract = {"perturbation_key": PERTURBATION_KEY, "context_key": CONTEXT_KEY, "control": CONTROL,
                "predicted_level": "pseudobulk"}
    if raw is None and baseline == CONTEXT_MEAN:
        name = CONTEXT_MEAN
        own, others = ([m for m in job.metrics if (m in COMPARES_CONDITIONS) == compares] for compares in (False, True))
        parts = [(predict_context_mean(obs, job.names, leave_out=True), own),
                 (predict_context_mean(obs, job.names, leave_out=False), others)]
        alone = sorted(set(job.names) - set(parts[0][0].obs_names))
        if alone:
            notes.append(_entry("note", f"baseline {CONTEXT_MEAN}", (
                f"{len(alone)} condition(s) are the only perturbation of their context, so there is no other "
                f"perturbation to average and they have no baseline: {', '.join(alone[:8])}"
                + (" ..." if len(alone) > 8 else ""))))
    elif raw is None and baseline == NO_CHANGE:
        name = NO_CHANGE
        control_only = predict_control(obs, job.names)
        parts = [(_with_controls(obs.pseudobulk, np.asarray(control_only.X), list(control_only.obs_names)),
                  job.metrics)]
    elif raw is None:
        raise VclibInputError(f"baseline={baseline!r} is not one of {', '.join(map(repr, BASELINES))}, an h5ad file "
                              "of predictions, or None.")
    else:
        name = Path(where).stem if where else "baseline"
        name = f"baseline_{name}" if name in (job.options["model"], CEILING) else name
        _check_layout(raw, "baseline", options=options, parity=parity,
                      needs_control=options["predicted_control"] == "predicted")
        parts, contract = [(raw, job.metrics)], {}
    jobs = []
    for predicted, metrics in parts:
        covered = [n for n in job.names if raw is not None or n in set(predicted.obs_names)]
        if not covered or not metrics:
            continue
        try:
            jobs.append(_Evaluation(predicted, obs, **{**options, **contract, "conditions": covered, "metrics": metrics,
                                                       "model": name, "observed_de": None}))
        except VclibInputError as err:
            raise VclibInputError(f"baseline {where or name}: {err}") from None
    return name, jobs


def _ceiling_conditions(obs: Observed, names: list[str], min_cells: int, notes: list) -> list[str]:
    """The scored conditions with ``min_cells`` or more observed cells whose context has as many control cells."""
    n_cells = obs.pseudobulk.obs["n_cells"]
    enough = [n for n in names if n_cells.get(n, 0) >= min_cells
              and n_cells.get(f"{n.split('|', 1)[0]}|{CONTROL}", 0) >= min_cells]
    few = [n for n in names if n not in set(enough)]
    why = (f"split halves of fewer than {min_cells} cells per condition (or per context's control) are too small "
           "a replicate to bound a score (min_cells= sets the threshold)")
    if not enough:
        notes.append(_entry("skipped", "noise ceiling", f"no scored condition has {min_cells} or more observed cells "
                            f"with as many control cells in its context: {why}"))
    elif few:
        notes.append(_entry("note", "noise ceiling", (
            f"{len(few)} of {len(names)} conditions get no ceiling ({', '.join(few[:8])}"
            f"{' ...' if len(few) > 8 else ''}): {why}")))
    return enough


def _calibration(combined: pd.DataFrame, summary: pd.DataFrame, *, model: str, base: str | None, has_ceiling: bool,
                 n_boot: int, seed, notes: list) -> pd.DataFrame:
    """calibrate() of the prediction on the conditions that have a baseline and a ceiling, or the reason."""
    own = combined[combined["model"] == model]
    models = set(combined["model"])
    reason = ("no baseline" if base is None or base not in models else
              "no noise ceiling (see the noise ceiling entry)" if not has_ceiling else "")
    if not reason:
        keys = [CONTEXT_KEY, PERTURBATION_KEY]
        have = [set(map(tuple, combined.loc[combined["model"] == m, keys].to_numpy())) for m in (model, base, CEILING)]
        common = have[0] & have[1] & have[2]
        rows = combined[[tuple(r) in common for r in combined[keys].to_numpy()]]
        if not len(rows):
            reason = "no condition has a prediction, a baseline and a ceiling"
        else:
            if len(common) < len(have[0]):
                notes.append(_entry("note", "calibrated scores", (
                    f"computed on the {len(common)} of {len(have[0])} conditions that have both a baseline and a "
                    "noise ceiling")))
            out = calibrate(rows, baseline=base, by=("metric",), n_boot=n_boot, seed=seed)
            return out[out["model"] == model].reset_index(drop=True)[CALIBRATED_COLUMNS]
    notes.append(_entry("skipped", "calibrated scores", f"{reason}: (u - b)/(c - b) needs both"))
    means = summary[summary["model"] == model].set_index("metric")
    metrics = list(dict.fromkeys(own["metric"]))
    return pd.DataFrame({"model": model, "metric": metrics, "mean": means["mean"].reindex(metrics).to_numpy(),
                         "n": means["n"].reindex(metrics).to_numpy(), "calibrated": np.nan,
                         "calibration_note": f"not calibratable here: {reason}"}, columns=CALIBRATED_COLUMNS)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for package in ("vclib", "anndata", "numpy", "scipy", "pandas", "numba", "h5py", "tqdm"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    out["vclib"] = __version__
    return out


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".partial-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_all(out_dir: Path, card: Scorecard) -> None:
    """The tables, then the record marked complete; the record is written first (marked ``writing``), so a folder
    left by an interrupted write is recognised as vclib's and written again."""
    _check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {**card.record, "status": "writing"}
    _write(out_dir / RECORD_FILE, json.dumps(_jsonable(record), indent=1))
    tables = {"scores.csv": card.scores, "baseline_scores.csv": card.baseline, "ceiling_scores.csv": card.ceiling,
              "summary.csv": card.summary, "calibrated.csv": card.calibrated, SKIPPED_FILE: card.notes}
    for name, table in tables.items():
        _write(out_dir / name, table.to_csv(index=False))
    card.record.update(status="complete", finished=datetime.now().isoformat(timespec="seconds"))
    _write(out_dir / RECORD_FILE, json.dumps(_jsonable(card.record), indent=1))


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    return table[[c for c in _SCORE_COLUMNS if c in table] + [c for c in table if c not in _SCORE_COLUMNS]]


def evaluate_files(
    predicted: str | Path | ad.AnnData,
    observed: str | Path | ad.AnnData,
    *,
    out_dir: str | Path | None = None,
    parity: str | None = None,
    baseline: str | Path | ad.AnnData | None = CONTEXT_MEAN,
    min_cells: int = 10,
    n_boot: int = 1000,
    seed: int | None = 0,
    model: str = PREDICTION,
    progress: bool = True,
    quiet: bool = False,
    command: list[str] | None = None,
    **options,
) -> Scorecard:
    """Score a prediction file against the observed cells, with a baseline, the noise ceiling and bootstrap CIs,
    into a folder of tables (the ``vclib evaluate`` command).

    The prediction is scored with :func:`evaluate` (every option of it can be given). Beside it, a baseline is
    scored the same way, and above it the noise ceiling (:func:`ceiling`: half of each condition's observed cells
    scored against the other half, corrected to a noise-free predictor) on the conditions with ``min_cells`` or
    more cells. :func:`aggregate` gives each metric's mean with a bootstrap 95% CI over perturbations for all
    three, and :func:`calibrate` the prediction's calibrated score ``(u − b)/(c − b)`` (0 = the baseline, 1 = the
    ceiling), only where the ceiling is clearly above the baseline. What cannot apply is skipped with a sentence
    saying why (printed, in ``notes`` and in ``skipped.csv``).

    **The default baseline** is ``"context_mean"`` (:func:`predict_context_mean`): each perturbation predicted as
    the mean pseudobulk of the *other* perturbations of its context. It is what makes a calibrated score mean
    something: it predicts the response all perturbations share (the systematic shift that lets correlation
    metrics reward predicting any perturbation at all; Systema), and it is the mean baseline that simple-baseline
    studies and the Virtual Cell Challenge found hard to beat; a calibrated score of 0 says the prediction knows no
    more about a perturbation than what all perturbations do. It is leak-free: a perturbation's prediction is made
    from other perturbations' cells only, so it is independent of its own, exactly as a training mean of N − 1
    training perturbations would be (no training data is at hand here, so the other scored perturbations stand in
    for it). The metrics that compare a prediction with the *other* conditions' observations (the discrimination
    scores, ``rank``, ``hit_rate_at_k``: :data:`COMPARES_CONDITIONS`) would find those observations inside the
    mean of the others (each prediction would be pulled away from its own perturbation, scoring below chance:
    ``rank`` near 1), so for them the baseline is one mean of all the context's perturbations, the same answer for
    each, which cannot tell perturbations apart and scores chance by construction (PDS and rank 0.5).
    ``"no_change"`` (the observed control for every perturbation) needs only control cells, but its deltas are
    zero, so correlations with it are undefined: pearson_delta, cosine_delta and the DE metrics cannot be
    calibrated against it. Best of all is the training mean of your own pipeline: pass its prediction file (the
    prediction's layout) as ``baseline``.

    Parameters
    ----------
    predicted
        Path of an h5ad file of predicted cells or pseudobulk (one row per condition), or an AnnData.
    observed
        Path of an h5ad file of observed cells (log1p), or an AnnData.
    out_dir
        Folder to write the tables into (made if missing), or None to write nothing. A folder holding files vclib
        did not write, or the results of an earlier finished evaluation, is refused, never overwritten.
    parity
        ``"cell-eval"``: cell-eval 0.8.2's layout and conventions (:data:`CELL_EVAL`: obs ``target_gene``,
        control ``non-targeting``, one context, the prediction's own control, ties by position, each query's
        own target excluded, lfc pseudocount 0, overlap 0 without observed DE genes); options given explicitly
        override them. The baseline, ceiling and CIs are vclib's additions (cell-eval's ``--ceiling`` uses the
        split-half Spearman–Brown value, vclib's ceiling the noise-free correction; see :func:`ceiling`).
    baseline
        ``"context_mean"`` (default), ``"no_change"``, a prediction file (or AnnData) in the prediction's layout,
        or None (no baseline, no calibrated scores).
    min_cells
        Fewest observed cells a condition (and its context's control) needs for a noise ceiling; the others get
        none, named in the notes.
    n_boot, seed
        Bootstrap resamples of the CIs and calibration; seed of the bootstrap and of the ceiling's split halves.
    model
        Name of the prediction in the tables.
    progress
        Show a progress bar naming the stage running.
    quiet
        Do not print what was skipped or adjusted.
    command
        The command line, for the record (``vclib evaluate`` passes its own).
    **options
        Options of :func:`evaluate` (``perturbation_key``, ``context_key``, ``control``, ``metrics``,
        ``exclude``, ``ties``, ``epsilon``, ``fdr``, ...).

    Returns
    -------
    :class:`Scorecard`. In ``out_dir``: ``scores.csv``, ``baseline_scores.csv``, ``ceiling_scores.csv``,
    ``summary.csv``, ``calibrated.csv``, ``skipped.csv`` and ``evaluate.json`` (:data:`OUTPUTS` says what each
    holds); every file is written, with its header only where a table is empty.

    References
    ----------
    Ahlmann-Eltze, Huber & Anders, Nat Methods 2025; Viñas Torné et al. (Systema), Nat Biotechnol 2025.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=1, n_perturbations=6, n_combinations=0, n_genes=60,
    ...                             cells_per_condition=20, control_cells=40)
    >>> card = vc.metrics.evaluate_files(vc.pseudobulk.pseudobulk(adata), adata, context_key=None,
    ...                                  metrics=["mse", "pearson_delta"], progress=False, quiet=True)
    >>> card.headline()[["metric", "mean", "n"]].to_dict("records")
    [{'metric': 'mse', 'mean': 0.0, 'n': 6}, {'metric': 'pearson_delta', 'mean': 1.0, 'n': 6}]
    """
    started = datetime.now().isoformat(timespec="seconds")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_out_dir(out)
    resolved = _resolve(parity, {**options, "model": model})
    if isinstance(min_cells, bool) or not isinstance(min_cells, int | np.integer) or min_cells < 2:
        raise VclibInputError(f"min_cells={min_cells!r}: a noise ceiling splits cells in two halves, so it needs an "
                              "integer of 2 or more.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise VclibInputError(f"n_boot={n_boot!r} must be a positive integer (1000 gives stable 95% CIs).")
    if model == CEILING or not str(model):
        raise VclibInputError(f"model={model!r} is taken by the noise ceiling's rows; name the prediction otherwise.")
    is_file = baseline is not None and (isinstance(baseline, ad.AnnData) or str(baseline) not in BASELINES)
    if is_file and not isinstance(baseline, ad.AnnData) and Path(baseline).suffix != ".h5ad":
        raise VclibInputError(f"baseline={str(baseline)!r} is not one of {', '.join(map(repr, BASELINES))}, an .h5ad "
                              "file of predictions, or None.")
    notes: list[dict] = []
    stages = _Stages(4 + is_file, progress)
    try:
        stages("reading the prediction")
        pred, pred_info = _read(predicted, "prediction")
        stages("reading the observation")
        real, real_info = _read(observed, "observation")
        base_raw, base_info = None, None
        if is_file:
            stages("reading the baseline")
            base_raw, base_info = _read(baseline, "baseline")
        stages("checking the inputs")
        pred, real = _as_log1p(pred, "prediction", notes), _as_log1p(real, "observation", notes)
        if base_raw is not None:
            base_raw = _as_log1p(base_raw, "baseline", notes)
        _check_layout(real, "observation", options=resolved, parity=parity, needs_control=True)
        _check_layout(pred, "prediction", options=resolved, parity=parity,
                      needs_control=resolved["predicted_control"] == "predicted")
        job = _Evaluation(pred, real, **resolved)
        obs = job.observed
        base_name, base_jobs = _baseline_evaluations(
            baseline, base_raw, (base_info or {}).get("path") or "", obs, job, resolved, parity, notes)
        if base_name == model:
            raise VclibInputError(f"the baseline and the prediction are both named {model!r}; pass another model=.")
        ceiling_names = _ceiling_conditions(obs, job.names, min_cells, notes)
        # the observed DE, if any, is computed once, in the prediction's stages
        later = sum(len([s for s in b.stages if s != "DE of the observed cells"]) for b in base_jobs)
        stages.plan(len(job.stages) + later + bool(ceiling_names) + 3)

        with _ordinary_pages():  # the scoring, as in evaluate()
            scores = _ordered(job.run(stage=lambda s: stages("metrics of the prediction" if s == "metrics" else s)))
            base_scores = pd.DataFrame(columns=_SCORE_COLUMNS)
            if base_jobs:
                base_scores = pd.concat([b.run(stage=lambda s: stages(f"baseline {base_name}: {s}"))
                                         for b in base_jobs], ignore_index=True)
                order = pd.Categorical(base_scores["metric"], categories=job.metrics, ordered=True)
                base_scores = _ordered(base_scores.iloc[np.argsort(order.codes, kind="stable")].reset_index(drop=True))
            ceil_scores = pd.DataFrame(columns=_SCORE_COLUMNS)
            if ceiling_names:
                stages("noise ceiling (split halves: DE and metrics)")
                scoring = {k: resolved[k] for k in SCORING_DEFAULTS if k not in ("predicted_control", "epsilon")}
                ceil_scores = _ordered(ceiling(obs, seed=seed, conditions=ceiling_names, metrics=job.metrics,
                                               epsilon=obs.epsilon, de_options=obs.de_options, **scoring))
        stages("bootstrap CIs")
        combined = pd.concat([t for t in (scores, base_scores, ceil_scores) if len(t)], ignore_index=True)
        summary = aggregate(combined, by=("model", "metric"), n_boot=n_boot, seed=seed)
        stages("calibration")
        calibrated = _calibration(combined, summary, model=model, base=base_name, has_ceiling=bool(len(ceil_scores)),
                                  n_boot=n_boot, seed=seed, notes=notes)
        if len(ceil_scores):
            above = beyond_ceiling(combined[combined["model"] != base_name], by=("metric",), n_boot=n_boot, seed=seed)
            for row in above.itertuples(index=False):
                notes.append(_entry("note", f"{row.model} above the noise ceiling on {row.metric}", row.why))
        own = summary[summary["model"] == model]
        for row in own[own["n"] == 0].itertuples(index=False):
            notes.append(_entry("skipped", f"metric {row.metric}", f"undefined for every condition: {row.note}"))
        stages("writing" if out is not None else "done")
        record = {
            "command_name": "evaluate", "command": command, "cwd": os.getcwd(), "started": started,
            "vclib_version": __version__, "versions": _versions(),
            "machine": {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
            "inputs": {"predicted": pred_info, "observed": real_info, "baseline": base_info},
            "options": {"parity": parity, "min_cells": min_cells, "n_boot": n_boot, "seed": seed,
                        **{k: v for k, v in resolved.items() if k != "observed_de"}},
            "baseline": {"name": base_name, "kind": "file" if is_file else baseline},
            "scored": {"conditions": len(job.names), "with_ceiling": len(ceiling_names), "metrics": job.metrics},
            "seconds": stages.seconds, "outputs": OUTPUTS,
        }
        card = Scorecard(scores=scores, baseline=base_scores, ceiling=ceil_scores, summary=summary,
                         calibrated=calibrated, notes=pd.DataFrame(notes, columns=NOTE_COLUMNS), record=record,
                         out_dir=out)
        if out is not None:
            _write_all(out, card)
    finally:
        stages.close()
    card.record["seconds"] = stages.seconds
    if not quiet:
        for row in card.notes.itertuples(index=False):
            print(f"{'Skipped' if row.kind == 'skipped' else 'Note'}: {row.analysis}: {row.reason}.")
    return card
