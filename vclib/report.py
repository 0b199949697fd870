"""The run report: what each notebook skipped and why, the key figures, and the ``index.html`` of a run.

Notebooks record every analysis that could not apply to the data with :func:`record` (a sentence each, also
printed in the notebook); :func:`write_index` gathers those sentences, the run's parameters, the headline table
(:func:`key_figures`) and the key plots into one page. Nothing here imports papermill or Jupyter.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import pandas as pd

SKIPPED_FILE = "skipped.csv"
REPORT_FILE = "index.html"
RUN_FILE = "run.json"
KEY_METRICS = ("pearson_delta", "discrimination_score_l1", "mse_delta", "r2_mean")
FIGURES = {  # file written by a notebook: caption
    "benchmark_leaderboard.png": "Leaderboards: mean score with 95% CI per model and split; dashed, the noise ceiling",
    "transfer_pairs.png": "Transfer of responses between pairs of contexts, against mismatched perturbations",
    "coverage_capacity.png": "Coverage versus capacity: error per MLP size, one line per seen fraction of the held-out "
                             "context, with 95% CIs",
    "failures_regimes.png": "Where the model beats the baseline (paired differences per stratum)",
}
HEADERS = {"split": "Split", "metric": "Metric", "best_model": "Best model", "best_mean": "Its score", "n": "n",
           "best_baseline": "Best baseline", "baseline_mean": "Baseline score", "ceiling": "Noise ceiling",
           "beats_best_baseline": "Best model beats the best baseline?", "calibrated": "Calibrated",
           "best_learned": "Best learned model", "learned_mean": "Its score",
           "learned_vs_baseline": "Learned model vs best baseline", "learned_calibrated": "Calibrated",
           "note": "Note"}


COLUMNS = ["notebook", "kind", "analysis", "reason"]


def _entries(items) -> list[dict]:
    out = []
    for item in items:
        if isinstance(item, pd.DataFrame | pd.Series):
            out += [{"kind": "skipped", **e} for e in item.attrs.get("skipped", [])]
            out += [{"kind": "note", **e} for e in item.attrs.get("notes", [])]
        elif isinstance(item, dict):
            out.append({"kind": "skipped", **item})
        else:
            out += [{"kind": "skipped", **e} for e in item]
    return out


def record(results_dir: str | Path, notebook: str, *items, quiet: bool = False) -> pd.DataFrame:
    """Record what a notebook skipped and what it had to adjust, with the reason of each, in
    ``results_dir/skipped.csv``, and print one sentence per entry.

    Parameters
    ----------
    results_dir
        The run folder.
    notebook
        The notebook's number or name (``"02"``).
    *items
        Tables whose ``attrs["skipped"]`` (analyses that could not apply) and ``attrs["notes"]`` (adjustments and
        degenerate results, e.g. fewer folds, a model with no targets among the genes) hold ``{"analysis",
        "reason"}`` entries, lists of such entries, or single entries (``"kind"`` defaults to ``"skipped"``).
    quiet
        Do not print the sentences.

    Returns
    -------
    The entries recorded now (``notebook``, ``kind``, ``analysis``, ``reason``). An entry recorded before is not
    repeated.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> record(folder, "02", {"analysis": "split combinations", "reason": "no doubles"}, quiet=True)["reason"].tolist()
    ['no doubles']
    """
    path = Path(results_dir) / SKIPPED_FILE
    new = pd.DataFrame([{"notebook": str(notebook), **{k: e[k] for k in COLUMNS[1:]}} for e in _entries(items)],
                       columns=COLUMNS).drop_duplicates().reset_index(drop=True)
    before = skipped(results_dir)
    table = pd.concat([before, new], ignore_index=True).drop_duplicates()
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    if not quiet:
        for row in new.itertuples(index=False):
            print(f"{'Skipped' if row.kind == 'skipped' else 'Note'}: {row.analysis}: {row.reason}.")
        if not (new["kind"] == "skipped").any():
            print("Nothing skipped: every analysis of this step applies to the data.")
    return new


def skipped(results_dir: str | Path) -> pd.DataFrame:
    """Everything the notebooks of a run recorded (:func:`record`): ``kind`` is ``"skipped"`` or ``"note"``."""
    path = Path(results_dir) / SKIPPED_FILE
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return table.assign(kind=table["kind"] if "kind" in table else "skipped")[COLUMNS]


def key_figures(run_dir: str | Path, *, metrics=KEY_METRICS) -> pd.DataFrame | None:
    """The run's headline: per split and key metric, the best model, whether it beats the best baseline, and its
    calibrated score (from notebook 02's ``benchmark_best.csv``); None when there is no such table."""
    path = Path(run_dir) / "benchmark_best.csv"
    if not path.exists():
        return None
    best = pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in
                                                              ("best_mean", "baseline_mean", "ceiling", "calibrated",
                                                               "learned_mean", "learned_calibrated", "n")})
    return best[best["metric"].isin(metrics)].reset_index(drop=True)


def _number(value) -> str:
    """Three significant figures, no '-0.000', '' for missing."""
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return ""
    text = f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return "0" if text in ("-0", "-0.0", "-0.000") else text


def figure_table(figures: pd.DataFrame) -> pd.DataFrame:
    """The key figures with readable headers and numbers, the columns a reader needs."""
    shown = figures[[c for c in HEADERS if c in figures]].copy()
    for column in shown:
        if shown[column].dtype.kind == "f":
            shown[column] = shown[column].map(_number)
    if "n" in shown:
        shown["n"] = shown["n"].map(lambda v: "" if v == "" else str(int(float(v))))
    return shown.fillna("").rename(columns=HEADERS)


def _with_score(name, score) -> str:
    """``"additive 0.796"``: a model and its score in one cell ('' without a model)."""
    return "" if name is None or pd.isna(name) or name == "" else f"{name} {_number(score)}".strip()


def page_table(figures: pd.DataFrame) -> pd.DataFrame:
    """The key figures as ``index.html`` shows them: each model beside its score, the split named once per group
    and n with the metric, so the table fits a page (11 columns, not the 20 of ``benchmark_best.csv``).

    Examples
    --------
    >>> f = pd.DataFrame({"split": ["s", "s"], "metric": ["mse_delta", "pearson_delta"], "n": [30, 27],
    ...                   "best_model": ["additive", "mlp"], "best_mean": [0.0878, 0.5243],
    ...                   "best_baseline": ["additive", "linear"], "baseline_mean": [0.0878, 0.41]})
    >>> page_table(f).iloc[:, :4].values.tolist()[1]  # the split is named on its group's first row only
    ['', 'pearson_delta (n = 27)', 'mlp 0.524', 'linear 0.41']
    """
    def get(column: str) -> pd.Series:
        return figures[column].reset_index(drop=True) if column in figures else pd.Series([None] * len(figures))

    split = get("split").astype(str)
    out = pd.DataFrame({
        "Split": split.where(split != split.shift(), ""),
        "Metric": [m if pd.isna(n) or n == "" else f"{m} (n = {int(float(n))})" for m, n in
                   zip(get("metric"), get("n"), strict=True)],
        "Best model": [_with_score(m, v) for m, v in zip(get("best_model"), get("best_mean"), strict=True)],
        "Best baseline": [_with_score(m, v) for m, v in zip(get("best_baseline"), get("baseline_mean"), strict=True)],
        "Noise ceiling": get("ceiling").map(_number),
        "Best model beats the best baseline?": get("beats_best_baseline"),
        "Calibrated": get("calibrated").map(_number),
        "Best learned model": [_with_score(m, v) for m, v in zip(get("best_learned"), get("learned_mean"),
                                                                 strict=True)],
        "Learned model vs best baseline": get("learned_vs_baseline"),
        "Learned, calibrated": get("learned_calibrated").map(_number),
        "Note": get("note"),
    })
    return out.fillna("").loc[:, lambda t: (t != "").any() | (t.columns == "Split")]


def _title(path: Path) -> str:
    """A notebook's first markdown heading."""
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return path.stem
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem


def write_index(run_dir: str | Path, notebooks: list[str | Path]) -> Path:
    """Write ``run_dir/index.html``: the dataset and parameters, the notebooks, what was skipped and why, the key
    figures table and the key plots. Returns its path."""
    run_dir = Path(run_dir)
    record_file = run_dir / RUN_FILE
    run = json.loads(record_file.read_text()) if record_file.exists() else {"parameters": {}, "vclib_version": "?"}
    parameters = run.get("parameters", {})
    dataset = parameters.get("DATASET", "simulated")
    links = "".join(
        f'<li><a href="{escape(Path(p).with_suffix(".html").name)}">{escape(_title(run_dir / Path(p).name))}</a>'
        f"{'' if (run_dir / Path(p).with_suffix('.html').name).exists() else ' (not run)'}</li>"
        for p in notebooks)
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(json.dumps(v, default=str))}</td></tr>"
                   for k, v in {"DATASET": dataset, **parameters}.items())
    entries = skipped(run_dir)
    skipped_html = "<p>Nothing was skipped: every analysis applied to this data.</p>" if entries.empty else \
        "".join(f"<h3>Notebook {escape(nb)}</h3><ul>" + "".join(
            f"<li>{'' if k == 'skipped' else '<i>note</i> · '}<b>{escape(a)}</b>: {escape(r)}</li>"
            for k, a, r in zip(g["kind"], g["analysis"], g["reason"], strict=True))
            + "</ul>" for nb, g in entries.groupby("notebook", sort=True))
    figures = key_figures(run_dir)
    table = "<p>No benchmark table in this run.</p>"
    if figures is not None and len(figures):
        table = page_table(figures).to_html(index=False, border=0, escape=True, classes="figures")
    images = "".join(f'<figure><img src="{escape(name)}" alt="{escape(caption)}"><figcaption>{escape(caption)}'
                     "</figcaption></figure>" for name, caption in FIGURES.items() if (run_dir / name).exists())
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vclib run {escape(run_dir.name)}: {escape(str(dataset))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:0.9em}}td,th{{padding:3px 8px;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}}table.figures{{font-size:0.8em;width:100%}}
img{{max-width:100%}}figure{{margin:1.5em 0}}figcaption{{color:#555;font-size:0.9em}}</style></head><body>
<h1>vclib run {escape(run_dir.name)}</h1>
<p>Dataset <b>{escape(str(dataset))}</b>; vclib {escape(str(run.get("vclib_version", "?")))}.</p>
<h2>Notebooks</h2><ol>{links}</ol>
<h2>Key figures</h2>
<p>Per split and metric: the best model, the best simple baseline, whether the best model beats it beyond the noise
(paired bootstrap CI over test perturbations; no verdict below 5 perturbations), and its calibrated score (0 = the
best baseline, 1 = the noise ceiling, shown only where the ceiling is clearly above the baseline); then the same for
the best learned model, wherever it ranks. Models with identical predictions are named together ("a = b").</p>
{table}
{images}
<h2>What this data could not answer, and what was adjusted</h2>
{skipped_html}
<h2>Parameters</h2><table>{rows}</table>
</body></html>
"""
    path = run_dir / REPORT_FILE
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
