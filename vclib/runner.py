"""Run the notebooks in order with papermill, into a fresh results folder, with HTML copies.

A run folder is never overwritten: a new run gets a new folder; ``resume=`` continues an interrupted run in
its own folder (with the same parameters), skipping the notebooks that already finished.
"""

from __future__ import annotations

import ast
import json
from datetime import datetime
from html import escape as html_escape
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
from nbconvert import HTMLExporter

from vclib import __version__
from vclib.schema import VclibInputError

RUN_FILE = "run.json"
REPORT_FILE = "index.html"
CELL_TIMEOUT = 3600  # seconds; a stuck cell fails the run instead of blocking it forever


def default_notebooks_dir() -> Path:
    """``notebooks/`` of the source tree (vclib is installed editable), else of the working directory."""
    beside = Path(__file__).resolve().parents[1] / "notebooks"
    return beside if beside.is_dir() else Path.cwd() / "notebooks"


def notebooks(directory: str | Path | None = None) -> list[Path]:
    """The workbench notebooks (``NN_name.ipynb``) in run order."""
    directory = Path(directory) if directory is not None else default_notebooks_dir()
    found = sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise VclibInputError(f"no notebooks named NN_name.ipynb in {str(directory)!r}.")
    return found


def parse_value(text: str):
    """Turn a ``-p NAME VALUE`` string into a Python value, as papermill's ``-p`` does.

    Examples
    --------
    >>> parse_value("3"), parse_value("0.5"), parse_value("True"), parse_value("None"), parse_value("K562")
    (3, 0.5, True, None, 'K562')
    >>> parse_value("['unseen_context', 'combinations']")
    ['unseen_context', 'combinations']
    """
    lowered = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def declared_parameters(paths: list[Path]) -> dict[str, dict]:
    """Parameters declared in the ``parameters`` cell of each notebook, by notebook name."""
    return {p.name: pm.inspect_notebook(str(p)) for p in paths}


def _new_run_dir(results_dir: Path, name: str | None) -> Path:
    if name is not None:
        run_dir = results_dir / name
        if run_dir.exists():
            raise VclibInputError(
                f"results folder {str(run_dir)!r} exists already; vclib never overwrites a run. Choose another "
                "--name, or pass --resume to finish an interrupted run."
            )
        return run_dir
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = results_dir / stamp
    i = 1
    while run_dir.exists():
        run_dir = results_dir / f"{stamp}-{i}"
        i += 1
    return run_dir


def run(
    *,
    parameters: dict | None = None,
    results_dir: str | Path = "results",
    name: str | None = None,
    resume: str | Path | None = None,
    notebooks_dir: str | Path | None = None,
    html: bool = True,
    kernel_name: str | None = None,
    progress: bool = True,
) -> Path:
    """Execute every notebook in order into a new results folder and return that folder.

    Parameters
    ----------
    parameters
        Notebook parameters by name (e.g. ``{"DATASET": "simulated", "FAST": True}``). Each notebook gets the
        ones its ``parameters`` cell declares; a name no notebook declares is an error. ``RESULTS_DIR`` is
        always set to the run folder, and ``WIDGETS`` defaults to False (interactive explorers are for
        JupyterLab; the HTML report is static).
    results_dir
        Parent folder of the runs.
    name
        Name of the run folder; default a time stamp. An existing folder is never overwritten.
    resume
        A run folder to continue: notebooks already executed there are skipped; the parameters must match.
    notebooks_dir
        Where the notebooks are (default: the repository's ``notebooks/``).
    html
        Also write an HTML copy of each executed notebook.
    kernel_name
        Jupyter kernel; default the notebook's own (``python3``, the running environment).
    progress
        Show papermill's cell progress bar.

    Returns
    -------
    The run folder, holding the executed notebooks, their HTML copies, ``index.html`` (links to them and the
    key figures), ``run.json`` and every table the notebooks wrote.
    """
    paths = notebooks(notebooks_dir)
    declared = declared_parameters(paths)
    parameters = dict(parameters or {})
    known = set().union(*declared.values())
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise VclibInputError(
            f"no notebook has a parameter {', '.join(map(repr, unknown))}; parameters are: {', '.join(sorted(known))}."
        )
    record = {"vclib_version": __version__, "parameters": parameters,
              "notebooks": [p.name for p in paths]}
    if resume is not None:
        run_dir = Path(resume)
        previous = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).exists() else None
        if previous is None:
            raise VclibInputError(f"{str(run_dir)!r} is not a vclib run folder (no {RUN_FILE}).")
        if previous["parameters"] != parameters or previous["vclib_version"] != __version__:
            raise VclibInputError(
                f"{str(run_dir)!r} was run with {previous['parameters']} (vclib {previous['vclib_version']}); "
                f"resuming needs the same parameters and version, got {parameters} (vclib {__version__})."
            )
    else:
        run_dir = _new_run_dir(Path(results_dir), name)
        run_dir.mkdir(parents=True)
        (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2, default=str))

    for path in paths:
        out = run_dir / path.name
        if out.exists():
            continue
        own = {k: v for k, v in parameters.items() if k in declared[path.name]}
        if "RESULTS_DIR" in declared[path.name]:
            own["RESULTS_DIR"] = str(run_dir.resolve())
        if "WIDGETS" in declared[path.name]:  # batch runs render static HTML, where widgets cannot respond
            own.setdefault("WIDGETS", False)
        partial = run_dir / f".partial-{path.name}"
        pm.execute_notebook(str(path), str(partial), parameters=own, cwd=str(path.parent),
                            kernel_name=kernel_name, progress_bar=progress, execution_timeout=CELL_TIMEOUT)
        partial.rename(out)  # the notebook counts as done only once it ran to the end
        if html:
            body, _ = HTMLExporter().from_notebook_node(nbformat.read(out, as_version=4))
            out.with_suffix(".html").write_text(body, encoding="utf-8")
    if html:
        (run_dir / REPORT_FILE).write_text(report(run_dir, paths), encoding="utf-8")
    return run_dir


KEY_METRICS = ("pearson_delta", "discrimination_score_l1", "mse_delta")
FIGURE_COLUMNS = ("split", "metric", "best_model", "best_mean", "best_baseline", "baseline_mean",
                  "beats_best_baseline", "calibrated", "best_learned", "learned_vs_baseline", "learned_calibrated",
                  "ceiling")


def key_figures(run_dir: str | Path, *, metrics=KEY_METRICS) -> pd.DataFrame | None:
    """The run's headline: per split and key metric, the best model, whether it beats the best baseline, and its
    calibrated score (from notebook 02's ``benchmark_best.csv``); None when there is no such table."""
    path = Path(run_dir) / "benchmark_best.csv"
    if not path.exists():
        return None
    best = pd.read_csv(path)
    return best[best["metric"].isin(metrics)].reset_index(drop=True)


def report(run_dir: str | Path, paths: list[Path]) -> str:
    """One HTML page for a run: links to the executed notebooks and the key figures."""
    run_dir = Path(run_dir)
    record = json.loads((run_dir / RUN_FILE).read_text())
    links = "".join(f'<li><a href="{html_escape(p.with_suffix(".html").name)}">{html_escape(p.stem)}</a></li>'
                    for p in paths)
    figures = key_figures(run_dir)
    table = "<p>No benchmark table in this run.</p>"
    if figures is not None and len(figures):
        shown = figures[[c for c in FIGURE_COLUMNS if c in figures]]
        table = shown.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vclib run {html_escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}</style></head><body>
<h1>vclib run {html_escape(run_dir.name)}</h1>
<p>vclib {html_escape(record["vclib_version"])}; parameters: {html_escape(json.dumps(record["parameters"]))}</p>
<h2>Notebooks</h2><ol>{links}</ol>
<h2>Key figures</h2>
<p>Per split and metric: the best model, the best simple baseline, whether the best model beats it beyond the noise
(paired bootstrap CI over test perturbations), and its calibrated score (0 = the best baseline, 1 = the split-half
noise ceiling; not clipped); then the same for the best learned model, wherever it ranks.</p>
{table}
</body></html>
"""
