"""Figures: every vc.pl function drawn on small simulator data and on degenerate shapes (one context, many
perturbations or contexts or models, rows without a value), checked for what makes a figure publishable.

Limits checked on every figure a plot makes for itself: at most 18 × 12 inches (:data:`vclib.pl._base.MAX_SIZE`);
no text with float noise (5 or more decimals, ``0000000``, ``9999999``); no empty tick label inside the view;
neighbouring tick labels that do not overlap; no legend over the axes' data area; annotations that do not
overlap; an empty plot that says why. Then one test per reported problem (colour range of the coverage heatmap,
the named baseline, readable strata, robust limits, ties among next experiments, the ceiling's scatter).
"""

from __future__ import annotations

import re
from itertools import combinations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Annotation, Text

import vclib as vc
from vclib import failures as F

matplotlib.use("Agg")

MAX_WIDTH, MAX_HEIGHT = 18.0, 12.0
NOISE = re.compile(r"\d\.\d{5,}|0000000|9999999")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------- data


def _coverage_tables(adata, *, truth: bool) -> dict:
    """The tables notebook 01 plots, for one dataset."""
    counts = vc.coverage.cell_counts(adata)
    distances = vc.coverage.control_distances(adata, n_pcs=10)
    transfer = vc.coverage.transferability(adata)
    summary = vc.coverage.summarize_transfer(vc.coverage.true_transfer(adata, transfer) if truth else transfer)
    return {"counts": counts, "distances": distances, "summary": summary,
            "deltas": vc.pseudobulk.deltas(vc.pseudobulk.pseudobulk(adata)),
            "pairs": vc.coverage.distance_vs_transfer(distances, summary),
            "coverage": vc.coverage.target_coverage(counts, summary),
            "plan": vc.coverage.next_experiments(counts, summary)}


@pytest.fixture(scope="module")
def cov(_small_sim):
    """Coverage tables of the small simulated screen (3 contexts, 12 knockdowns, 3 doubles)."""
    return _coverage_tables(_small_sim, truth=True)


@pytest.fixture(scope="module")
def one_context():
    """A single-context screen: every table that compares contexts is empty."""
    return _coverage_tables(vc.loaders.simulate(n_contexts=1, n_perturbations=8, n_combinations=0, n_genes=60,
                                                cells_per_condition=10, control_cells=20, seed=1), truth=False)


@pytest.fixture(scope="module")
def bench(_small_sim, tmp_path_factory):
    """A small benchmark (two splits, four models and the ceiling, three metrics) and what notebook 03 reads."""
    adata = _small_sim
    folder = tmp_path_factory.mktemp("bench") / "benchmark"
    scores = vc.benchmark.run(adata, splits=["unseen_perturbation", "unseen_context"],
                              models=["no_change", "training_mean", "perturbation_mean", "linear"],
                              metrics=["pearson_delta", "mse_delta", "discrimination_score_l1"], results_dir=folder,
                              progress=False, split_options={"unseen_perturbation": {"n_folds": 3}})
    effects = F.observed_effects(adata, n_splits=1)
    distances = vc.coverage.control_distances(adata, n_pcs=10)
    table = F.condition_table(scores, F.split_covariates(scores.attrs["splits"], distances), effects)
    predictions = vc.benchmark.load_predictions(folder)
    observed = vc.pseudobulk.deltas(vc.pseudobulk.pseudobulk(adata))
    return {"scores": scores, "summary": vc.metrics.aggregate(scores, n_boot=50),
            "versus": vc.metrics.compare(scores, baseline="training_mean", n_boot=50),
            "table": table, "effects": effects, "predictions": predictions, "observed": observed,
            "regimes": F.regime_map(table, model="linear", baseline="training_mean", metric="pearson_delta",
                                    covariate="effect_size", n_boot=50),
            "curves": F.hit_rate_curves(predictions, effects, min_de=2),
            "collapse": F.mode_collapse(predictions, observed),
            "worst": F.worst_conditions(table, model="linear", metric="pearson_delta", n=6)}


@pytest.fixture(scope="module")
def cap(_small_sim):
    """Coverage versus capacity on the small simulated screen (two widths, every seen fraction), and on a screen of
    one context, where the split cannot apply."""
    one = vc.loaders.simulate(n_contexts=1, n_perturbations=8, n_combinations=0, n_genes=60, cells_per_condition=10,
                              control_cells=20, seed=1)
    return {"summary": vc.capacity.summary(vc.capacity.run(_small_sim, widths=(2, 8), progress=False)),
            "empty": vc.capacity.summary(vc.capacity.run(one, widths=(2, 8), progress=False))}


def _many_perturbations(n=300, contexts=("A", "B", "C")):
    rng = np.random.default_rng(0)
    values = rng.integers(20, 60, size=(n, len(contexts))) * (rng.uniform(size=(n, len(contexts))) < 0.7)
    table = pd.DataFrame(values, index=[f"GENE{i:04d}" for i in range(n)], columns=list(contexts))
    table = pd.concat([pd.DataFrame([[400] * len(contexts)], index=["control"], columns=list(contexts)), table])
    table.index.name, table.columns.name = "perturbation", "context"
    return table


def _many_contexts(k=30):
    rng = np.random.default_rng(1)
    names = [f"cell_line_{i:02d}" for i in range(k)]
    rows = [(a, b, rng.uniform(50, 300), rng.uniform(0.01, 0.1)) for a, b in combinations(names, 2)]
    return pd.DataFrame(rows, columns=["context_a", "context_b", "edistance", "correlation_distance"])


def _many_models(n=40):
    rng = np.random.default_rng(2)
    rows = [{"model": f"model_{i:02d}", "split": s, "metric": "pearson_delta", "mean": m, "ci_low": m - 0.05,
             "ci_high": m + 0.05, "n": 30} for i in range(n) for s, m in [("a", rng.uniform()), ("b", rng.uniform())]]
    return pd.DataFrame(rows)


def _comparison_with_nan_rows(n_models=14):
    """compare() output with undefined rows (a constant predictor's correlation), too-few rows, three splits."""
    rng = np.random.default_rng(3)
    rows = []
    for split in ["combinations", "unseen_context", "unseen_perturbation"]:
        for i in range(n_models):
            d = rng.normal(0.1, 0.1)
            rows.append({"model": f"model_{i}", "split": split, "metric": "pearson_delta", "difference": d,
                         "ci_low": d - 0.05, "ci_high": d + 0.05, "n": 30, "n_pairs": 30,
                         "better": "yes" if d > 0.05 else "no" if d < -0.05 else "tie"})
        rows.append({"model": "no_change", "split": split, "metric": "pearson_delta", "difference": np.nan,
                     "ci_low": np.nan, "ci_high": np.nan, "n": 0, "n_pairs": 0, "better": "n/a"})
    rows[0].update(better="too few conditions (n = 3)", n=3)
    out = pd.DataFrame(rows)
    out.attrs["baseline"] = "training_mean"
    return out


def _gallery(d):
    return vc.pl.failure_gallery(d["worst"], d["predictions"], d["observed"], model="linear")[0]


#: name → (fixture, function drawing the plot on that fixture's data and returning an Axes)
CASES = {
    "coverage_heatmap": ("cov", lambda d: vc.pl.coverage_heatmap(d["counts"])),
    "coverage_heatmap/one_context": ("one_context", lambda d: vc.pl.coverage_heatmap(d["counts"])),
    "coverage_heatmap/many_perturbations": (None, lambda d: vc.pl.coverage_heatmap(_many_perturbations())),
    "effect_sizes": ("cov", lambda d: vc.pl.effect_sizes(d["deltas"])),
    "effect_sizes/one_context": ("one_context", lambda d: vc.pl.effect_sizes(d["deltas"])),
    "overlap_heatmap": ("cov", lambda d: vc.pl.overlap_heatmap(vc.coverage.context_overlap(d["counts"]))),
    "overlap_heatmap/many_contexts": (None, lambda d: vc.pl.overlap_heatmap(vc.coverage.context_overlap(
        _many_perturbations(60, [f"cell_line_{i:02d}" for i in range(30)])))),
    "distance_heatmap": ("cov", lambda d: vc.pl.distance_heatmap(d["distances"])),
    "distance_heatmap/correlation": ("cov", lambda d: vc.pl.distance_heatmap(d["distances"],
                                                                             value="correlation_distance")),
    "distance_heatmap/one_context": ("one_context", lambda d: vc.pl.distance_heatmap(d["distances"])),
    "distance_heatmap/many_contexts": (None, lambda d: vc.pl.distance_heatmap(_many_contexts())),
    "transfer_pairs": ("cov", lambda d: vc.pl.transfer_pairs(d["summary"])),
    "transfer_pairs/one_context": ("one_context", lambda d: vc.pl.transfer_pairs(d["summary"])),
    "transfer_vs_truth": ("cov", lambda d: vc.pl.transfer_vs_truth(d["summary"])),
    "distance_vs_transfer": ("cov", lambda d: vc.pl.distance_vs_transfer(d["pairs"])),
    "distance_vs_transfer/one_context": ("one_context", lambda d: vc.pl.distance_vs_transfer(d["pairs"])),
    "target_coverage": ("cov", lambda d: vc.pl.target_coverage(d["coverage"], target="C2")),
    "target_coverage/one_context": ("one_context", lambda d: vc.pl.target_coverage(d["coverage"], target="all")),
    "next_experiments": ("cov", lambda d: vc.pl.next_experiments(d["plan"], target="C2")),
    "next_experiments/one_context": ("one_context", lambda d: vc.pl.next_experiments(d["plan"], target="all")),
    "leaderboard": ("bench", lambda d: vc.pl.leaderboard(d["summary"], metric="pearson_delta")),
    "leaderboard/many_models": (None, lambda d: vc.pl.leaderboard(_many_models(), metric="pearson_delta")),
    "versus_baseline": ("bench", lambda d: vc.pl.versus_baseline(d["versus"], metric="pearson_delta")),
    "versus_baseline/nan_rows": (None, lambda d: vc.pl.versus_baseline(_comparison_with_nan_rows(),
                                                                       metric="pearson_delta")),
    "coverage_capacity": ("cap", lambda d: vc.pl.coverage_capacity(d["summary"])),
    "coverage_capacity/one_context": ("cap", lambda d: vc.pl.coverage_capacity(d["empty"])),
    "regime_map": ("bench", lambda d: vc.pl.regime_map(d["regimes"])),
    "error_vs_covariate": ("bench", lambda d: vc.pl.error_vs_covariate(d["table"], metric="mse_delta",
                                                                       covariate="effect_size")),
    "error_vs_covariate/integer": ("bench", lambda d: vc.pl.error_vs_covariate(
        d["table"], metric="mse_delta", covariate="n_training_contexts")),
    "hit_rate_curves": ("bench", lambda d: vc.pl.hit_rate_curves(d["curves"], split="unseen_context")),
    "spread": ("bench", lambda d: vc.pl.spread(d["collapse"])),
    "delta_scatter": ("bench", lambda d: vc.pl.delta_scatter(
        d["observed"].X[0] * 0.5 + 0.1, d["observed"].X[0], genes=list(d["observed"].var_names), label_top=12)),
    "failure_gallery": ("bench", _gallery),
}


def _draw(name, request):
    fixture, plot = CASES[name]
    ax = plot(request.getfixturevalue(fixture) if fixture else None)
    fig = ax.figure
    fig.canvas.draw()
    return ax, fig


def _visible_texts(fig):
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _labels_in_view(ax, axis):
    ticks = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    return [label for label, where in zip(ticks.get_ticklabels(), ticks.get_ticklocs(), strict=False)
            if lo <= where <= hi and label.get_visible()]


def _overlapping(boxes, slack=0.5):
    """Pairs of boxes that overlap by more than ``slack`` pixels each way."""
    out = []
    for a, b in combinations(boxes, 2):
        if min(a.x1, b.x1) - max(a.x0, b.x0) > slack and min(a.y1, b.y1) - max(a.y0, b.y0) > slack:
            out.append((a, b))
    return out


# ---------------------------------------------------------------- what every figure must do


@pytest.mark.parametrize("name", list(CASES))
def test_figure_is_publishable(name, request):
    ax, fig = _draw(name, request)
    renderer = fig.canvas.get_renderer()
    width, height = fig.get_size_inches()
    assert width <= MAX_WIDTH + 1e-6 and height <= MAX_HEIGHT + 1e-6, f"{name}: {width:.1f} x {height:.1f} in"
    noisy = [t.get_text() for t in _visible_texts(fig) if NOISE.search(t.get_text())]
    assert not noisy, f"{name}: float noise in {noisy[:3]}"
    for each in fig.axes:
        if not each.axison:  # an empty plot: it must say why
            assert any(t.get_text().startswith("no ") for t in each.texts), f"{name}: blank panel"
            continue
        for axis in ("x", "y"):
            labels = _labels_in_view(each, axis)
            assert all(label.get_text().strip() for label in labels), f"{name}: empty {axis} tick label"
            clash = _overlapping([label.get_window_extent(renderer) for label in labels])
            assert not clash, f"{name}: {len(clash)} overlapping {axis} tick labels"
        legend = each.get_legend()
        if legend is not None:
            assert not _overlapping([legend.get_window_extent(renderer), each.get_window_extent(renderer)],
                                    slack=1.0), f"{name}: the legend covers the data area"
        notes = [t.get_window_extent(renderer) for t in each.texts if isinstance(t, Annotation)]
        assert not _overlapping(notes), f"{name}: overlapping point labels"


# ---------------------------------------------------------------- one test per reported problem


def test_coverage_heatmap_colours_span_the_perturbed_rows_only():
    counts = _many_perturbations(40)
    ax = vc.pl.coverage_heatmap(counts)
    mesh = ax.collections[0]
    perturbed = counts.drop(index="control")
    perturbed = perturbed[perturbed > 0]
    assert mesh.norm.vmin == perturbed.min().min() and mesh.norm.vmax == perturbed.max().max()  # not 400
    assert np.ma.getmaskarray(mesh.get_array()).reshape(len(counts), -1)[0].all()  # the control row is not coloured
    assert {t.get_text() for t in ax.texts} == {"400"}  # its numbers are written instead


def test_coverage_heatmap_labels_never_touch_with_many_rows():
    ax = vc.pl.coverage_heatmap(_many_perturbations(71), max_rows=80)
    fig = ax.figure
    fig.canvas.draw()
    labels = _labels_in_view(ax, "y")
    assert len(labels) == 72  # every row labelled (71 perturbations and the control)
    assert not _overlapping([t.get_window_extent(fig.canvas.get_renderer()) for t in labels], slack=0)
    assert fig.get_size_inches()[1] <= MAX_HEIGHT
    big = vc.pl.coverage_heatmap(_many_perturbations(300))
    assert "80 of 300 perturbations" in big.get_title()


def test_versus_baseline_names_the_baseline_and_says_why_rows_are_missing(bench):
    versus = bench["versus"]
    ax = vc.pl.versus_baseline(versus, metric="pearson_delta")
    assert "training_mean" in ax.get_xlabel()
    assert "no_change" in ax.get_legend().get_title().get_text()  # its correlation is undefined: named, not blank
    assert "no_change" not in [t.get_text() for t in ax.get_yticklabels()]
    tall = vc.pl.versus_baseline(_comparison_with_nan_rows(), metric="pearson_delta")  # 48 rows
    assert tall.figure.get_size_inches()[1] <= MAX_HEIGHT
    texts = [t.get_text() for t in tall.get_yticklabels()]
    assert any("too few, n = 3" in t for t in texts)


def test_regime_strata_are_integers_or_rounded(bench):
    readable = re.compile(r"^(n/a|-?[\d,]+(\.\d+)?(–-?[\d,]+(\.\d+)?)?)$")
    for covariate in ["effect_size", "n_training_contexts", "distance_to_training", "n_cells"]:
        regimes = F.regime_map(bench["table"], model="linear", baseline="training_mean", metric="pearson_delta",
                               covariate=covariate, n_boot=20)
        for stratum in regimes["stratum"]:
            assert readable.match(stratum), stratum
            for number in re.findall(r"\d+\.(\d+)", stratum):
                assert len(number) <= 3, stratum
        assert (regimes["baseline"] == "training_mean").all()
    integers = F.regime_map(bench["table"].assign(x=lambda t: t["n_cells"] % 7), model="linear",
                            baseline="training_mean", metric="pearson_delta", covariate="x", n_boot=20)
    assert all(re.fullmatch(r"\d+(–\d+)?", s) for s in integers["stratum"])
    first = [int(s.split("–")[0]) for s in integers.loc[integers["split"] == integers["split"].iloc[0], "stratum"]]
    assert first == sorted(first)  # in increasing order of the covariate


def test_error_vs_covariate_outliers_do_not_flatten_the_rest():
    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(0.1, 0.02, 200), [3.6, 2.4]]
    table = pd.DataFrame({"model": "m", "metric": "mse_delta", "value": values, "x": rng.uniform(0, 250, 202)})
    ax = vc.pl.error_vs_covariate(table, metric="mse_delta", covariate="x")
    low, high = ax.get_ylim()
    assert high < 0.5 and low > -0.1  # the 200 points fill the panel
    assert "2 points above" in ax.get_title() and "3.6" in ax.get_title()  # said, with how far they reach


def test_next_experiments_breaks_ties_by_a_stated_criterion_and_marks_the_rest(cov):
    plan = cov["plan"]
    assert {"tied", "n_contexts"} <= set(plan.columns)
    for _, rows in plan.groupby("target"):
        assert rows["rank"].is_monotonic_increasing and rows["rank"].iloc[0] == 1
        key = rows[["gain_per_condition", "kind", "n_contexts"]].astype(str).agg("|".join, axis=1)
        # equal on every criterion <=> equal rank, and tied counts the candidates sharing the rank
        assert (key.groupby(rows["rank"]).nunique() == 1).all()
        assert (rows.groupby("rank")["tied"].transform("size") == rows["tied"]).all()
        singles = rows[(rows["n_conditions"] == 1) & (rows["kind"] == "in the target")]
        assert singles["n_contexts"].is_monotonic_increasing  # the tie-break: fewest contexts first
    target = plan.loc[plan["tied"] > 1, "target"].iloc[0]
    ax = vc.pl.next_experiments(plan, target=target)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert any(label.startswith("=") for label in labels)
    assert "tie" in ax.get_legend().get_title().get_text()


def test_next_experiments_ranks_by_hand():
    """C is covered by A for p1, p2 (equal gains, both measured in one context): they tie; p3 is measured in two
    contexts: ranked after them."""
    counts = pd.DataFrame({"A": [50, 10, 10, 10], "B": [40, 0, 0, 10], "C": [30, 0, 0, 0]},
                          index=["control", "p1", "p2", "p3"])
    summary = pd.DataFrame({"context_a": ["A", "A", "B"], "context_b": ["B", "C", "C"], "n_shared": [5, 5, 5],
                            "transfer": [0.9, 0.55, 0.1], "chance": [0.1, 0.1, 0.1]})
    plan = vc.coverage.next_experiments(counts, summary, targets="C")
    singles = plan[plan["kind"] == "in the target"].set_index("perturbation")
    assert singles.loc["p1", "rank"] == singles.loc["p2", "rank"] == 1 and singles.loc["p1", "tied"] == 2
    assert singles.loc["p3", "rank"] == 3 and singles.loc["p3", "tied"] == 1


def test_legends_sit_outside_the_data(bench, cov):
    axes = [vc.pl.target_coverage(cov["coverage"], target="C2"), vc.pl.transfer_vs_truth(cov["summary"]),
            vc.pl.leaderboard(bench["summary"], metric="mse_delta"),
            vc.pl.hit_rate_curves(bench["curves"], split="unseen_perturbation"), vc.pl.spread(bench["collapse"]),
            vc.pl.error_vs_covariate(bench["table"], metric="mse_delta", covariate="effect_size")]
    for ax in axes:
        ax.figure.canvas.draw()
        renderer = ax.figure.canvas.get_renderer()
        assert ax.get_legend() is not None
        assert not _overlapping([ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)])


def test_gallery_panels_fit_and_their_labels_do_not_overlap(bench):
    axes = vc.pl.failure_gallery(bench["worst"], bench["predictions"], bench["observed"], model="linear")
    fig = axes[0].figure
    fig.canvas.draw()
    assert fig.get_size_inches()[0] <= MAX_WIDTH and len(axes) == len(bench["worst"])
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        notes = [t.get_window_extent(renderer) for t in ax.texts if isinstance(t, Annotation)]
        assert notes and not _overlapping(notes, slack=0)
    titles = [ax.get_title() for ax in axes]
    assert all(f"pearson_delta = {v:.2f}" in t for t, v in zip(titles, bench["worst"]["value"], strict=True))


def _r(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def test_the_ceiling_scatter_agrees_with_its_score(bench):
    """The ceiling's prediction is one half of the cells, scored against the other half (noise-corrected): its
    scatter must show that half, not the whole data, which holds the same cells (r far above the score)."""
    scores, predictions, observed = bench["scores"], bench["predictions"], bench["observed"]
    rows = scores[(scores["model"] == "ceiling") & (scores["metric"] == "pearson_delta")].dropna(subset=["value"])
    row = rows.iloc[0]
    keys = dict(model="ceiling", split=row["split"], fold=row["fold"], context=row["context"],
                perturbation=row["perturbation"])
    half_a = F.predicted_delta(predictions, **keys)
    half_b = F.scored_against(predictions, observed, **keys)
    r = _r(half_a, half_b)
    assert np.sqrt(2 * r / (1 + r)) == pytest.approx(row["value"], abs=1e-4)  # what the score is
    whole = observed[f"{row['context']}|{row['perturbation']}"].X.ravel()
    assert _r(half_a, whole) > row["value"] + 0.05  # the old scatter: half against the data that holds it
    ax = vc.pl.prediction_scatter(predictions, observed, metric="pearson_delta", score=row["value"], **keys)
    drawn = ax.collections[0].get_offsets()
    assert _r(drawn[:, 0], drawn[:, 1]) == pytest.approx(r, abs=1e-4)
    assert f"noise-corrected {row['value']:.2f}" in ax.get_title()
    model = scores[(scores["model"] == "linear") & (scores["metric"] == "pearson_delta")].iloc[0]
    keys = dict(model="linear", split=model["split"], fold=model["fold"], context=model["context"],
                perturbation=model["perturbation"])
    ax = vc.pl.prediction_scatter(predictions, observed, metric="pearson_delta", score=model["value"], **keys)
    drawn = ax.collections[0].get_offsets()
    assert _r(drawn[:, 0], drawn[:, 1]) == pytest.approx(model["value"], abs=1e-4)
    assert f"pearson_delta = {model['value']:.2f}" in ax.get_title()
