"""How well is a target context covered, and which measurement would cover it better?

A perturbation is *covered* for a target context to the degree that its response there is known: 1 if it was
measured in the target; otherwise the weight of the best context that measured it, where a context's weight is
how far its responses transfer to the target above chance, ``(transfer − chance) / (1 − chance)`` clipped to
[0, 1] (from :func:`vclib.coverage.summarize_transfer`; the clipping is for weighting only, the transfer tables
keep their values). A source whose transfer to the target rests on fewer than ``min_shared`` shared
perturbations counts 0: its transfer is unknown. The target's coverage is the mean over the panel (every
perturbation measured somewhere).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vclib.coverage._tables import _measured
from vclib.schema import VclibInputError

KINDS = ("in the target", "in another context", "whole panel in a context")


def _weights(summary: pd.DataFrame, contexts: list[str], *, min_shared: int) -> dict[tuple[str, str], dict]:
    """Per (source, target): the weight and the numbers behind it (both directions of each pair)."""
    out = {}
    for row in summary.itertuples(index=False):
        known = row.n_shared >= min_shared and np.isfinite(row.transfer)
        if not known:
            w = np.nan
        elif np.isfinite(row.chance) and row.chance < 1:
            w = float(np.clip((row.transfer - row.chance) / (1 - row.chance), 0, 1))
        else:
            w = float(np.clip(row.transfer, 0, 1))
        info = {"weight": w, "transfer": row.transfer, "chance": row.chance, "n_shared": row.n_shared}
        out[(row.context_a, row.context_b)] = out[(row.context_b, row.context_a)] = info
    return out


def _link(source: str, target: str, info: dict) -> str:
    """The transfer from source to target in words, with the numbers behind its weight."""
    return (f"{source} → {target} transfer weight {info['weight']:.2f} (r = {info['transfer']:.2f} vs "
            f"{info['chance']:.2f} for mismatched perturbations, {int(info['n_shared'])} shared)")


def _check_targets(targets, contexts: list[str]) -> list[str]:
    if targets is None:
        return contexts
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = [t for t in targets if t not in contexts]
    if unknown:
        raise VclibInputError(f"target context {unknown[0]!r} is not in the data; contexts are: {contexts}.")
    return targets


def target_coverage(
    counts: pd.DataFrame,
    summary: pd.DataFrame,
    *,
    targets: str | list[str] | None = None,
    min_cells: int = 1,
    min_shared: int = 3,
) -> pd.DataFrame:
    """How well each perturbation of the panel is covered for each target context, and by which source.

    Parameters
    ----------
    counts
        Output of :func:`vclib.coverage.cell_counts`.
    summary
        Output of :func:`vclib.coverage.summarize_transfer`.
    targets
        Target context(s); ``None``: every context.
    min_cells
        A condition counts as measured with at least this many cells.
    min_shared
        Shared perturbations needed before a source's transfer to the target is trusted.

    Returns
    -------
    DataFrame with one row per (``target``, ``perturbation``): ``measured_in_target``, ``n_contexts`` (where it
    was measured), ``best_source`` ("" if none), ``source_weight``, ``coverage`` (0–1) and ``explanation``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=8, n_genes=80, cells_per_condition=20)
    >>> counts = vc.coverage.cell_counts(adata)
    >>> summary = vc.coverage.summarize_transfer(vc.coverage.transferability(adata))
    >>> table = vc.coverage.target_coverage(counts, summary, targets="C2")
    >>> bool(table["coverage"].between(0, 1).all())
    True
    """
    measured = _measured(counts, min_cells)
    measured = measured[measured.any(axis=1)]
    contexts = list(counts.columns)
    targets = _check_targets(targets, contexts)
    weights = _weights(summary, contexts, min_shared=min_shared)
    rows = []
    for t in targets:
        for p, where in measured.iterrows():
            sources = [c for c in contexts if where[c] and c != t]
            known = [(weights.get((c, t), {}).get("weight", np.nan), c) for c in sources]
            known = [(w, c) for w, c in known if np.isfinite(w)]
            best_w, best = min(known, key=lambda x: (-x[0], x[1])) if known else (0.0, "")
            if where[t]:
                coverage, text = 1.0, f"measured in {t}"
            elif best:
                coverage = best_w
                text = f"not measured in {t}; best source {best}: {_link(best, t, weights[(best, t)])}"
            elif sources:
                coverage = 0.0
                text = (f"measured only in {', '.join(sources)}, whose transfer to {t} is unknown "
                        f"(fewer than {min_shared} perturbations measured in both)")
            else:
                coverage, text = 0.0, "measured nowhere"
            rows.append({"target": t, "perturbation": p, "measured_in_target": bool(where[t]),
                         "n_contexts": int(where.sum()), "best_source": best if not where[t] else t,
                         "source_weight": 1.0 if where[t] else best_w, "coverage": coverage, "explanation": text})
    return pd.DataFrame(rows, columns=["target", "perturbation", "measured_in_target", "n_contexts", "best_source",
                                       "source_weight", "coverage", "explanation"])


def least_covered(coverage: pd.DataFrame) -> str:
    """The target context with the lowest mean coverage (ties: first by name).

    Examples
    --------
    >>> import pandas as pd
    >>> import vclib as vc
    >>> vc.coverage.least_covered(pd.DataFrame({"target": ["A", "A", "B"], "coverage": [1, 0.5, 0.2]}))
    'B'
    """
    if coverage.empty:
        raise VclibInputError("the coverage table is empty: no target context to choose from.")
    means = coverage.groupby("target")["coverage"].mean()
    return str(means.sort_index().idxmin())


def next_experiments(
    counts: pd.DataFrame,
    summary: pd.DataFrame,
    *,
    targets: str | list[str] | None = None,
    min_cells: int = 1,
    min_shared: int = 3,
    include_target: bool = True,
    top: int | None = None,
) -> pd.DataFrame:
    """Rank candidate measurements by how much they would raise a target context's coverage.

    Candidates: a perturbation measured directly in the target (``include_target=False`` when the target
    cannot be screened, e.g. a patient); a perturbation in another context, which helps as far as that context
    transfers to the target and beats the perturbation's current best source; and the whole missing panel in a
    context (a new screen there). ``gain`` is in perturbations covered; ``coverage_after`` the target's mean
    coverage if that measurement were made (assuming the context's transfer stays what it is). Ranked by gain
    per measured condition, then single measurements before screens, then (the tie-break among single
    measurements) the perturbation measured in the fewest contexts first (its context dependence is the least
    known: a perturbation seen in one context gives a model nothing to learn it from), then total gain.
    Candidates equal on all of these share a rank (``tied`` says how many) and are listed by name; ranks skip
    after a tie (1, 2, 2, 4), as in sports.

    Parameters
    ----------
    counts
        Output of :func:`vclib.coverage.cell_counts`.
    summary
        Output of :func:`vclib.coverage.summarize_transfer`.
    targets
        Target context(s); ``None``: every context.
    min_cells, min_shared
        As in :func:`target_coverage`.
    include_target
        Offer measurements in the target itself.
    top
        Keep the best ``top`` candidates per target.

    Returns
    -------
    DataFrame with ``target``, ``rank`` (shared by tied candidates), ``tied`` (candidates sharing this rank, 1:
    none), ``kind``, ``perturbation`` (a name, or "N missing perturbations"), ``context``, ``n_conditions``,
    ``n_contexts`` (contexts that measured the perturbation today, the tie-break; empty for screens), ``gain``,
    ``gain_per_condition``, ``coverage_before``, ``coverage_after`` and ``why`` (the reason in words).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=8, n_genes=80, cells_per_condition=20)
    >>> counts = vc.coverage.cell_counts(adata)
    >>> summary = vc.coverage.summarize_transfer(vc.coverage.transferability(adata))
    >>> plan = vc.coverage.next_experiments(counts, summary, targets="C2", top=3)
    >>> plan[["rank", "tied", "perturbation", "n_contexts"]].values.tolist()
    [[1, 1, 'G0000+G0007', 1], [2, 3, 'G0002+G0003', 2], [2, 3, 'G0005+G0007', 2]]
    """
    coverage = target_coverage(counts, summary, targets=targets, min_cells=min_cells, min_shared=min_shared)
    measured = _measured(counts, min_cells)
    measured = measured[measured.any(axis=1)]
    contexts = list(counts.columns)
    weights = _weights(summary, contexts, min_shared=min_shared)
    columns = ["target", "rank", "tied", "kind", "perturbation", "context", "n_conditions", "n_contexts", "gain",
               "gain_per_condition", "coverage_before", "coverage_after", "why"]
    parts = []
    for t, cov in coverage.groupby("target", sort=False):
        cov = cov.set_index("perturbation")
        n_panel = len(cov)
        before = float(cov["coverage"].mean())
        rows = []

        def now(p: str, cov=cov) -> str:
            c = cov.loc[p]
            return (f"today covered at {c['coverage']:.2f}" + (f" via {c['best_source']}" if c["best_source"] else "")
                    + f", measured in {c['n_contexts']} context{'s' if c['n_contexts'] != 1 else ''}")

        missing_t = [p for p in cov.index if not cov.loc[p, "measured_in_target"]]
        if include_target and missing_t:
            for p in missing_t:
                rows.append({"kind": KINDS[0], "perturbation": p, "context": t, "n_conditions": 1,
                             "gain": 1 - cov.loc[p, "coverage"], "why": f"measures {p} directly in {t}; {now(p)}"})
            gain = float((1 - cov.loc[missing_t, "coverage"]).sum())
            rows.append({"kind": KINDS[2], "perturbation": f"{len(missing_t)} missing perturbations", "context": t,
                         "n_conditions": len(missing_t), "gain": gain,
                         "why": f"screens the {len(missing_t)} perturbations not yet measured in {t} itself"})
        for c in contexts:
            if c == t:
                continue
            info = weights.get((c, t))
            w = info["weight"] if info else np.nan
            if not np.isfinite(w) or w <= 0:
                continue
            link = _link(c, t, info)
            gains = {p: w - cov.loc[p, "coverage"] for p in missing_t if not measured.loc[p, c]}
            gains = {p: g for p, g in gains.items() if g > 1e-12}
            for p, g in gains.items():
                rows.append({"kind": KINDS[1], "perturbation": p, "context": c, "n_conditions": 1, "gain": g,
                             "why": f"measures {p} in {c}; {link}; {p} is {now(p)}"})
            if len(gains) > 1:
                rows.append({"kind": KINDS[2], "perturbation": f"{len(gains)} missing perturbations", "context": c,
                             "n_conditions": len(gains), "gain": float(sum(gains.values())),
                             "why": f"screens the {len(gains)} perturbations of the panel missing in {c} that would "
                                    f"improve {t}; {link}"})
        if not rows:
            continue
        table = pd.DataFrame(rows)
        table["gain_per_condition"] = table["gain"] / table["n_conditions"]
        single = table["n_conditions"] == 1
        table["n_contexts"] = pd.array([int(cov.loc[p, "n_contexts"]) if one else pd.NA
                                        for p, one in zip(table["perturbation"], single, strict=True)], dtype="Int64")
        # the criteria, with gains rounded so that float noise (1 − 0.77 computed two ways) cannot break a tie
        key = pd.DataFrame({"gain": -table["gain_per_condition"].round(9),
                            "kind": table["kind"].map({k: i for i, k in enumerate(KINDS)}),
                            "contexts": table["n_contexts"].astype("Float64").fillna(np.inf),
                            "total": -table["gain"].round(9)})
        order = np.lexsort([table["perturbation"], table["context"], *[key[c] for c in reversed(key.columns)]])
        table, key = table.iloc[order].reset_index(drop=True), key.iloc[order].reset_index(drop=True)
        new_group = key.ne(key.shift()).any(axis=1).to_numpy()
        group = np.cumsum(new_group)
        table.insert(0, "target", t)
        table.insert(1, "rank", pd.Series(np.arange(1, len(table) + 1)).where(new_group).ffill().astype(int))
        table.insert(2, "tied", pd.Series(group).map(pd.Series(group).value_counts()).to_numpy())
        table["coverage_before"] = before
        table["coverage_after"] = before + table["gain"] / n_panel
        parts.append(table if top is None else table.head(top))
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]
