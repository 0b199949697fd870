"""Plots of what was measured: coverage of perturbations × contexts and effect sizes."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform

from vclib.coverage import distance_matrix, rank_correlation
from vclib.pl._base import (
    annotation_format,
    empty,
    label_layout,
    legend_outside,
    number,
    place_labels,
    row_labels,
    why_empty,
)
from vclib.pl._base import axes as _axes
from vclib.schema import CONTEXT_KEY, CONTROL

_FEW_CONTEXTS = "coverage analysis compares contexts and needs at least 2"


def coverage_heatmap(counts: pd.DataFrame, *, ax: plt.Axes | None = None, max_rows: int = 80) -> plt.Axes:
    """Heatmap of cells per perturbation × context (output of :func:`vclib.coverage.cell_counts`).

    The colour scale spans the perturbed conditions only; the control row, usually far larger, is drawn in grey
    with its numbers written in, so it cannot squeeze every perturbation into one colour. Unmeasured cells (0) are
    blank. With more than ``max_rows`` perturbations, the rows measured in the fewest contexts are shown (the
    title says so). Labels are sized to the rows and never touch: too many rows for a 6-point label are labelled
    every k-th.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> ax = vc.pl.coverage_heatmap(vc.coverage.cell_counts(adata))
    """
    control = counts.loc[[CONTROL]] if CONTROL in counts.index else counts.iloc[:0]
    perturbed = counts.drop(index=CONTROL, errors="ignore")
    shown = perturbed
    if len(perturbed) > max_rows:
        shown = perturbed.loc[(perturbed > 0).sum(axis=1).sort_values(kind="stable").index[:max_rows]]
    matrix = pd.concat([control, shown])
    created = ax is None
    ax = _axes(ax, (2.4 + 0.6 * matrix.shape[1], 1.6 + 0.16 * len(matrix)))
    if created:  # the rows get the height: margins of 0.75 inch above and 0.9 below, whatever the figure's height
        height = ax.figure.get_figheight()
        ax.figure.subplots_adjust(top=1 - 0.75 / height, bottom=0.9 / height)
    values = shown.where(shown > 0)
    if values.isna().all().all():
        return empty(ax, "perturbed condition with cells", "only control cells were counted")
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    mask = np.zeros(matrix.shape, dtype=bool)
    mask[: len(control)] = True  # the control row: grey, written in, outside the colour scale
    sns.heatmap(matrix.where(matrix > 0), mask=mask, ax=ax, cmap="viridis", vmin=low, vmax=high, cbar=high > low,
                cbar_kws={"label": "cells per perturbed condition"}, yticklabels=False,
                linewidths=0.2 if len(matrix) <= 150 else 0, linecolor="white")
    size, _ = label_layout(ax, len(matrix))
    for j, n in enumerate(control.iloc[0] if len(control) else []):
        ax.add_patch(Rectangle((j, 0), 1, 1, facecolor="0.88", edgecolor="white", lw=0.2))
        ax.text(j + 0.5, 0.5, number(n), ha="center", va="center", fontsize=min(size, 8), color="0.2")
    labels = [f"{CONTROL} (cells)" if i < len(control) else str(p) for i, p in enumerate(matrix.index)]
    row_labels(ax, np.arange(len(matrix)) + 0.5, labels)
    ax.tick_params(axis="y", length=0)
    measured = int((perturbed > 0).to_numpy().sum())
    title = f"{measured} of {perturbed.size} perturbation × context conditions measured"
    if high == low:  # one colour: a colour bar would invent a range
        title += f",\neach with {number(high)} cells"
    if len(shown) < len(perturbed):
        title += f"\n(the {len(shown)} of {len(perturbed)} perturbations measured in the fewest contexts)"
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(ax.get_xlabel() or "context")
    return ax


def effect_sizes(deltas: ad.AnnData, *, seed: int = 0, ax: plt.Axes | None = None) -> plt.Axes:
    """Distribution of the effect size (L2 norm of the delta) of every perturbed condition, per context.

    The points are spread sideways by a jitter drawn with ``seed`` (seaborn's stripplot draws it from numpy's
    global random state, so the same data would give a different figure on every run).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> ax = vc.pl.effect_sizes(vc.pseudobulk.deltas(vc.pseudobulk.pseudobulk(adata)))
    """
    frame = pd.DataFrame({CONTEXT_KEY: deltas.obs[CONTEXT_KEY].astype(str).to_numpy(),
                          "effect size (‖delta‖₂)": np.linalg.norm(np.asarray(deltas.X), axis=1)})
    order = sorted(frame[CONTEXT_KEY].unique())
    ax = _axes(ax, (1.5 + 0.8 * len(order), 3.5))
    if frame.empty:
        return empty(ax, "perturbed conditions", "the data holds control cells only")
    sns.boxplot(frame, x=CONTEXT_KEY, y="effect size (‖delta‖₂)", order=order, ax=ax, color="0.85", fliersize=0)
    position = frame[CONTEXT_KEY].map({c: i for i, c in enumerate(order)}).to_numpy()
    jitter = np.random.default_rng(seed).uniform(-0.2, 0.2, size=len(frame))
    ax.scatter(position + jitter, frame["effect size (‖delta‖₂)"], s=9, color="C0", zorder=3)
    size = frame["effect size (‖delta‖₂)"]
    if size.min() > 0 and size.max() / size.min() > 10:  # a few strong hits would flatten the rest: log scale
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: number(v)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("effect size (‖delta‖₂, log scale)")
    if len(order) > 1:
        row_labels(ax, range(len(order)), order, axis="x", largest=10)
        if len(order) > 6 and max(len(c) for c in order) > 3:
            ax.tick_params(axis="x", labelrotation=90)
    ax.set_title("How strongly each perturbation moves expression")
    return ax


_LABELS = {"edistance": "E-distance", "correlation_distance": "correlation distance"}


def overlap_heatmap(overlap: pd.DataFrame, *, ax: plt.Axes | None = None) -> plt.Axes:
    """Jaccard overlap of the contexts' perturbation sets (output of :func:`vclib.coverage.context_overlap`).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> ax = vc.pl.overlap_heatmap(vc.coverage.context_overlap(vc.coverage.cell_counts(adata)))
    """
    n = len(overlap)
    ax = _axes(ax, (1.8 + 0.6 * n, 1.2 + 0.5 * n))
    if n == 0:
        return empty(ax, "contexts", "no perturbation was counted")
    sns.heatmap(overlap, ax=ax, vmin=0, vmax=1, cmap="Blues", annot=n <= 12, fmt=".2f", square=True,
                cbar_kws={"label": "Jaccard overlap of perturbations"}, xticklabels=False, yticklabels=False)
    _square_labels(ax, list(overlap.index), list(overlap.columns))
    ax.set_title("Which contexts measured the same perturbations?", fontsize="medium")
    return ax


def _square_labels(ax: plt.Axes, rows: list, columns: list) -> None:
    """Row and column labels of a context × context heatmap, sized (and thinned) to fit, columns upright when
    short."""
    row_labels(ax, np.arange(len(rows)) + 0.5, rows)
    row_labels(ax, np.arange(len(columns)) + 0.5, columns, axis="x")
    ax.tick_params(axis="x", labelrotation=90 if max(len(str(c)) for c in columns) > 4 and len(columns) > 4 else 0)
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_xlabel(CONTEXT_KEY)
    ax.set_ylabel(CONTEXT_KEY)


def _cluster_order(matrix: pd.DataFrame) -> list[str]:
    """Contexts in the leaf order of an average-linkage clustering of a distance matrix (NaN rows last)."""
    ok = matrix.index[matrix.notna().sum(axis=1) == len(matrix)].tolist()
    rest = [c for c in matrix.index if c not in ok]
    if len(ok) < 3:
        return ok + rest
    sub = matrix.loc[ok, ok].to_numpy()
    condensed = squareform(np.clip((sub + sub.T) / 2, 0, None), checks=False)
    return [ok[i] for i in leaves_list(linkage(condensed, method="average"))] + rest


def distance_heatmap(distances: pd.DataFrame, *, value: str = "edistance", ax: plt.Axes | None = None) -> plt.Axes:
    """Heatmap of context distances (output of :func:`vclib.coverage.control_distances`), contexts ordered by
    hierarchical clustering (average linkage) so that similar contexts sit together. Skipped contexts
    (too few control cells) are blank and last.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> ax = vc.pl.distance_heatmap(vc.coverage.control_distances(adata, n_pcs=10))
    """
    n = len(set(distances["context_a"]) | set(distances["context_b"]))
    ax = _axes(ax, (2.2 + 0.6 * n, 1.5 + 0.5 * n))
    if distances.empty:
        return empty(ax, "context pairs", why_empty(distances, _FEW_CONTEXTS))
    matrix = distance_matrix(distances, value=value)
    order = _cluster_order(matrix)
    matrix = matrix.loc[order, order]
    label = _LABELS.get(value, value.replace("_", " "))
    sns.heatmap(matrix, ax=ax, cmap="magma_r", annot=len(matrix) <= 10, fmt=annotation_format(matrix.to_numpy()),
                square=True, cbar_kws={"label": label}, xticklabels=False, yticklabels=False)
    _square_labels(ax, order, order)
    ax.set_title(f"Control cells: {label} between contexts (clustered)", fontsize="medium")
    return ax


def transfer_pairs(summary: pd.DataFrame, *, max_rows: int = 30, ax: plt.Axes | None = None) -> plt.Axes:
    """Per pair of contexts: how well the same perturbation's response transfers (raw, and corrected for noise
    when cells allow it) against the chance level of mismatched perturbations (output of
    :func:`vclib.coverage.summarize_transfer`). With more than ``max_rows`` pairs, the half transferring worst
    and the half transferring best are shown (the title says how many are left out).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=6, n_genes=80, cells_per_condition=20)
    >>> ax = vc.pl.transfer_pairs(vc.coverage.summarize_transfer(vc.coverage.transferability(adata)))
    """
    n_rows = min(len(summary), max_rows)
    ax = _axes(ax, (6.5, 1.8 + 0.3 * max(n_rows, 1)))
    if summary.empty:
        return empty(ax, "pairs of contexts sharing a perturbation", why_empty(summary, _FEW_CONTEXTS))
    table = summary.sort_values("transfer").reset_index(drop=True)
    left_out = len(table) - n_rows
    if left_out:
        table = pd.concat([table.head(n_rows // 2), table.tail(n_rows - n_rows // 2)], ignore_index=True)
    y = np.arange(len(table))
    labels = [f"{a} – {b} (n = {n})" for a, b, n in zip(table["context_a"], table["context_b"], table["n_shared"],
                                                        strict=True)]
    ax.hlines(y, table["chance"], table["transfer"], color="0.8", zorder=1)
    ax.scatter(table["chance"], y, marker="|", s=120, color="0.3", label="mismatched perturbations (chance)",
               zorder=2)
    ax.scatter(table["same_raw"], y, color="C0", label="same perturbation, raw", zorder=3)
    if table["same_corrected"].notna().any():
        ax.scatter(table["same_corrected"], y, color="C3", label="same perturbation, noise-corrected", zorder=3)
    ax.axvline(0, color="0.6", lw=0.8)
    if left_out:
        ax.axhline(n_rows // 2 - 0.5, color="0.3", lw=0.8, ls=":")
    ax.set_ylim(-0.5, len(table) - 0.5)  # best transfer on top
    row_labels(ax, y, labels)
    ax.set_xlabel(f"mean {table['method'].iloc[0]} r of responses between the two contexts")
    title = "Do responses transfer between contexts?"
    if left_out:
        title += f"\n({n_rows // 2} worst and {n_rows - n_rows // 2} best of {len(summary)} pairs; {left_out} between)"
    ax.set_title(title, fontsize="medium")
    legend_outside(ax, where="below", ncol=2)
    return ax


def transfer_vs_truth(
    summary: pd.DataFrame,
    *,
    truth: str = "true_transfer_weighted",
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """Estimated transferability (raw and corrected) against the simulator's truth, one point per pair of
    contexts (a :func:`vclib.coverage.summarize_transfer` table with the truth columns). ``truth``:
    ``"true_transfer_weighted"`` (weighted as the estimate is) or ``"true_transfer"`` (plain mean).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=6, n_genes=80, cells_per_condition=20)
    >>> table = vc.coverage.true_transfer(adata, vc.coverage.transferability(adata))
    >>> ax = vc.pl.transfer_vs_truth(vc.coverage.summarize_transfer(table))
    """
    ax = _axes(ax, (4.2, 4))
    if summary.empty:
        return empty(ax, "pairs of contexts", _FEW_CONTEXTS)
    ax.scatter(summary[truth], summary["same_raw"], color="C0", label="raw")
    if summary["same_corrected"].notna().any():
        ax.scatter(summary[truth], summary["same_corrected"], color="C3", label="noise-corrected")
    values = summary[[truth, "same_raw", "same_corrected"]].to_numpy(dtype=float)
    lo, hi = np.nanmin(values), np.nanmax(values)
    pad = 0.05 * (hi - lo + 1e-9)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", ls="--", lw=1, label="estimate = truth")
    ax.set_xlabel("true transferability (simulator" + (", reliability-weighted)" if truth.endswith("weighted")
                                                       else ")"))
    ax.set_ylabel("estimated transferability")
    ax.set_title("Estimate vs ground truth, per pair of contexts", fontsize="medium")
    legend_outside(ax, where="below", ncol=3)
    return ax


def distance_vs_transfer(
    pairs: pd.DataFrame,
    *,
    distance: str = "edistance",
    transfer: str = "transfer",
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """Scatter of control-cell distance against transferability, one point per pair of contexts (output of
    :func:`vclib.coverage.distance_vs_transfer`), with Spearman's ρ in the title.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=6, n_genes=80, cells_per_condition=20)
    >>> pairs = vc.coverage.distance_vs_transfer(vc.coverage.control_distances(adata, n_pcs=10),
    ...                                          vc.coverage.summarize_transfer(vc.coverage.transferability(adata)))
    >>> ax = vc.pl.distance_vs_transfer(pairs)
    """
    ax = _axes(ax, (4.5, 4))
    ok = pairs.dropna(subset=[distance, transfer]) if len(pairs) else pairs
    if ok.empty:
        return empty(ax, "pairs of contexts with both a distance and a transfer estimate",
                     why_empty(pairs, _FEW_CONTEXTS))
    ax.scatter(ok[distance], ok[transfer], color="C0")
    if len(ok) <= 15:  # each pair named where its label has room (labels never overlap)
        ax.margins(0.15)
        ax.autoscale_view()
        place_labels(ax, ok[distance], ok[transfer], [f"{a}–{b}" for a, b in zip(ok["context_a"], ok["context_b"],
                                                                                   strict=True)])
    stat = rank_correlation(ok, distances=(distance,), transfer=transfer).iloc[0]
    ax.set_xlabel(f"control-cell {_LABELS.get(distance, distance.replace('_', ' '))}")
    ax.set_ylabel(transfer.replace("_", " "))
    ax.set_title(f"Spearman ρ = {stat['spearman_rho']:.2f} over {stat['n_pairs']} pairs", fontsize="medium")
    return ax


def target_coverage(coverage: pd.DataFrame, *, target: str, ax: plt.Axes | None = None) -> plt.Axes:
    """How well each perturbation is covered for one target context, coloured by where the knowledge comes from
    (output of :func:`vclib.coverage.target_coverage`).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=8, n_genes=80, cells_per_condition=20)
    >>> counts = vc.coverage.cell_counts(adata)
    >>> summary = vc.coverage.summarize_transfer(vc.coverage.transferability(adata))
    >>> ax = vc.pl.target_coverage(vc.coverage.target_coverage(counts, summary), target="C2")
    """
    rows = coverage[coverage["target"] == target].sort_values(["coverage", "perturbation"], ascending=[False, True])
    ax = _axes(ax, (min(max(4.0, 0.12 * len(rows) + 2), 12.0), 3.6))
    if rows.empty:
        return empty(ax, f"coverage table for {target}", "no perturbation was measured anywhere")
    sources = [s if s else "(none)" for s in rows["best_source"]]
    names = sorted(set(sources) - {target, "(none)"})
    colours = {target: "0.2", "(none)": "0.85", **{s: f"C{i}" for i, s in enumerate(names)}}
    x = np.arange(len(rows))
    ax.bar(x, rows["coverage"].clip(lower=0.02), color=[colours[s] for s in sources], width=0.85)
    for s in [target, *names, "(none)"]:
        if s in sources:
            ax.bar([np.nan], [np.nan], color=colours[s], label="measured in the target" if s == target else
                   ("no usable source" if s == "(none)" else f"via {s}"))
    if len(rows) <= 40:
        ax.set_xticks(x, rows["perturbation"], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(rows)} perturbations, best covered first")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("coverage for the target")
    ax.set_title(f"{target}: mean coverage {rows['coverage'].mean():.2f}", fontsize="medium")
    legend_outside(ax, where="below", ncol=3)
    return ax


def next_experiments(plan: pd.DataFrame, *, target: str, top: int = 10, ax: plt.Axes | None = None) -> plt.Axes:
    """The best candidate measurements for a target context and how much each raises its coverage (output of
    :func:`vclib.coverage.next_experiments`).

    Each bar is a candidate's gain per condition measured (the ranking criterion), labelled with its rank; a rank
    shared by several candidates (equal gain, kind and number of contexts that measured the perturbation, the
    tie-break) is written ``=r`` and the note under the axis says how many share it, so a list of equal gains
    never reads as an order.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=8, n_genes=80, cells_per_condition=20)
    >>> counts = vc.coverage.cell_counts(adata)
    >>> summary = vc.coverage.summarize_transfer(vc.coverage.transferability(adata))
    >>> ax = vc.pl.next_experiments(vc.coverage.next_experiments(counts, summary), target="C2")
    """
    everything = plan[plan["target"] == target].sort_values("rank", kind="stable")
    rows = everything.head(top)
    ax = _axes(ax, (6.5, 1.8 + 0.3 * max(len(rows), 1)))
    if rows.empty:
        return empty(ax, f"candidate measurement raises {target}'s coverage",
                     "its perturbations are measured there, or no other context transfers better")
    kinds = list(dict.fromkeys(plan["kind"]))
    colour = {k: f"C{i}" for i, k in enumerate(sorted(kinds))}
    y = np.arange(len(rows))
    gain = rows["gain_per_condition"] if "gain_per_condition" in rows else rows["gain"] / rows["n_conditions"]
    ax.barh(y, gain, color=[colour[k] for k in rows["kind"]])
    for k in sorted(set(rows["kind"])):
        ax.barh([np.nan], [np.nan], color=colour[k], label=k)
    tied = rows["tied"].to_numpy() if "tied" in rows else np.ones(len(rows), dtype=int)
    ranks = [f"={r}" if t > 1 else f"{r}" for r, t in zip(rows["rank"], tied, strict=True)]
    ax.set_yticks(y, [f"{r}  {p} in {c}" for r, p, c in zip(ranks, rows["perturbation"], rows["context"],
                                                             strict=True)], fontsize=8)
    if "n_contexts" in rows:  # the tie-break, written beside each single measurement
        for yi, g, n in zip(y, gain, rows["n_contexts"], strict=True):
            if pd.notna(n):
                ax.text(g, yi, f" in {int(n)} context{'s' if n != 1 else ''}", va="center", fontsize=7, color="0.3")
    ax.set_xlim(0, float(np.nanmax(gain)) * 1.45)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    before = rows["coverage_before"].iloc[0]
    ax.set_xlabel(f"perturbations covered per condition measured ({target}'s coverage now {before:.2f})")
    ax.set_title(f"What to measure next for {target}", fontsize="medium")
    notes = []
    for rank in sorted(set(rows.loc[tied > 1, "rank"])):
        n_tied = int((everything["rank"] == rank).sum())
        shown = int((rows["rank"] == rank).sum())
        notes.append(f"={rank}: {n_tied}" + (f" ({n_tied - shown} not shown)" if shown < n_tied else ""))
    title = None
    if notes:
        title = ("=r: tied (same gain, measured in as many contexts), listed by name\n"
                 + "; ".join(notes) + " candidates")
    legend_outside(ax, where="below", ncol=3, title=title, title_fontsize="small")
    return ax
