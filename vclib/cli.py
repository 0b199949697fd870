"""The ``vclib`` command line.

``vclib run`` executes the notebooks with papermill; ``vclib evaluate PRED REAL -o DIR`` scores a prediction file
against observed cells (:func:`vclib.metrics.evaluate_files`); ``vclib datasets list`` shows the registry of public
perturbation screens and what is cached, ``vclib datasets get NAME`` downloads, verifies and caches one.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

import pandas as pd

from vclib.schema import VclibInputError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vclib", description="vclib: test virtual-cell claims on your data.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run all notebooks in order into results/<run>/",
        description="Run all notebooks in order with papermill into a new folder results/<run>/, with HTML "
        "copies. Example sweep: for d in 0 0.5 1; do vclib run -p CONTEXT_DIVERGENCE $d; done",
    )
    run.add_argument("dataset", nargs="?", default=None,
                     help="'simulated' (default), a registry name (vclib datasets list) or a path to an .h5ad")
    run.add_argument("--perturbation-key", help="obs column with the perturbation")
    run.add_argument("--context-key", help="obs column with the context ('none' for a single context)")
    run.add_argument("--control", help="label of the control cells")
    run.add_argument("--values", help="what X holds: auto (default), counts, log1p, log2p or signature")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="any notebook parameter, as papermill's -p (repeatable)")
    run.add_argument("--results", default="results", help="parent folder of the runs (default: results)")
    run.add_argument("--name", help="name of the run folder (default: a time stamp); never overwritten")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run in its folder")
    run.add_argument("--notebooks", help="folder of the notebooks (default: the repository's notebooks/)")
    run.add_argument("--no-html", action="store_true", help="skip the HTML copies")

    _evaluate_parser(sub)

    external = sub.add_parser(
        "external",
        help="run a published model (e.g. scgen) in its own environment on folds written by vc.splits.export",
        description="Run a published model in an environment of its own, created on first use from the pinned "
        "requirements in models/NAME/ (scGen: a few minutes, about 2 GB), on a folder written by "
        "vc.splits.export; the answers land in FOLDS/predictions/, which vc.models.ExternalPredictions(FOLDS) "
        "scores. Options after FOLDS go to the model's predict.py (scgen: --epochs, --batch-size, --patience, "
        "--seed).",
    )
    external.add_argument("name", help="the model: a folder of models/ (scgen)")
    external.add_argument("folds", help="a folder written by vc.splits.export")
    external.add_argument("--rebuild", action="store_true", help="create the model's environment again")
    external.add_argument("options", nargs=argparse.REMAINDER, help="options of the model's predict.py")

    datasets = sub.add_parser(
        "datasets",
        help="list, download and cache public perturbation screens",
        description="The registry of public perturbation screens (URLs and their sources: data/README.md). "
        "Files are cached in $VCLIB_DATA_DIR (default: data/cache/ of a source checkout, else the user cache).",
    )
    actions = datasets.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every registered dataset, and whether it is cached")
    listing.add_argument("--cache-dir", help="cache folder (default: $VCLIB_DATA_DIR or data/cache/)")
    get = actions.add_parser("get", help="download, verify and cache a dataset; print where it is")
    get.add_argument("name", help="registry name, as `vclib datasets list` shows it")
    get.add_argument("--cache-dir", help="cache folder (default: $VCLIB_DATA_DIR or data/cache/)")
    get.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


# vc.metrics.evaluate's keyword options that `vclib evaluate` offers as --options (the others take Python objects)
_EVALUATE_OPTIONS = ("perturbation_key", "context_key", "control", "metrics", "conditions", "reference",
                     "predicted_control", "exclude", "ties", "top_genes", "top_de", "top_r2", "fdr", "epsilon", "hit_k",
                     "hit_min_de", "no_de", "predicted_level")
_SPELLING = {"context_key": "'none' for one context", "metrics": "comma-separated", "conditions": "comma-separated",
             "exclude": "targets, own, none, or comma-separated genes", "no_de": "nan or 0"}


def _parameter_help(doc: str) -> dict[str, str]:
    """Each parameter's description in a numpydoc docstring's Parameters section, on one line, without the Sphinx
    markup (so the command's --help says what the Python docstring says).

    Examples
    --------
    >>> _parameter_help("Parameters\\n----------\\nfdr, epsilon\\n    FDR and ``eps``.\\n\\nReturns\\n")
    {'fdr': 'FDR and eps.', 'epsilon': 'FDR and eps.'}
    """
    import textwrap

    doc = textwrap.dedent(doc.split("\n", 1)[1] if not doc.startswith("Parameters") else doc)
    section = doc.split("Parameters\n----------\n", 1)[1].split("\nReturns\n", 1)[0]
    out: dict[str, str] = {}
    names: list[str] = []
    for line in section.splitlines():
        if line.startswith(" "):
            text = re.sub(r":\w+:`~?([^`]+)`", r"\1", line.strip()).replace("``", "")
            out.update({n: f"{out.get(n, '')} {text}".strip() for n in names})
        elif line.strip():
            names = [n.strip() for n in line.split(",")]
    return out


def _option_type(default):
    return int if isinstance(default, int) and not isinstance(default, bool) else \
        float if isinstance(default, float) else str


def _evaluate_parser(sub) -> None:
    evaluate = sub.add_parser(
        "evaluate",
        help="score a prediction file against observed cells into DIR (cell-eval's layout with --parity cell-eval)",
        description="Score PRED (predicted cells or one row per condition) against REAL (observed cells), as "
        "vc.metrics.evaluate does, with a baseline beside it, the noise ceiling above it (split halves of REAL), "
        "bootstrap 95% CIs over perturbations and calibrated scores; write the tables to DIR. Example: vclib "
        "evaluate pred.h5ad real.h5ad -o scores --parity cell-eval",
    )
    evaluate.add_argument("pred", metavar="PRED", help="h5ad file of predictions")
    evaluate.add_argument("real", metavar="REAL", help="h5ad file of observed cells (log1p)")
    evaluate.add_argument("-o", "--out-dir", required=True, metavar="DIR",
                          help="folder for the tables (new or empty; never overwritten)")
    evaluate.add_argument("--parity", help="cell-eval: cell-eval 0.8.2's layout and conventions "
                          "(vc.metrics.CELL_EVAL); options given explicitly override them")
    from vclib import metrics
    from vclib.metrics._evaluate import EVALUATE_DEFAULTS

    described = _parameter_help(metrics.evaluate.__doc__)
    for name in _EVALUATE_OPTIONS:
        default = EVALUATE_DEFAULTS[name]
        notes = [_SPELLING.get(name, ""), f"default {default}",
                 f"--parity cell-eval: {metrics.CELL_EVAL[name]}" if name in metrics.CELL_EVAL else ""]
        text = f"{described[name]} ({'; '.join(n for n in notes if n)})".replace("%", "%%")
        evaluate.add_argument(f"--{name.replace('_', '-')}", type=_option_type(default), help=text)
    evaluate.add_argument("--no-tie-correction", action="store_true", help="DE without the ranks' tie correction")
    evaluate.add_argument("--no-continuity", action="store_true", help="DE without the continuity correction")
    evaluate.add_argument("--model", default="prediction", help="name of the prediction in the tables")
    evaluate.add_argument("--baseline", default="context_mean", help="context_mean (default: the mean of the other "
                          "perturbations of the context), no_change, none, or an h5ad file of baseline predictions "
                          "in PRED's layout")
    evaluate.add_argument("--min-cells", type=int, default=10,
                          help="fewest observed cells a condition needs for a noise ceiling (default 10)")
    evaluate.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the split halves (default 0)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")


def _evaluate_options(args: argparse.Namespace) -> dict:
    """The evaluate options given on the command line, in vc.metrics.evaluate's terms."""
    options = {name: getattr(args, name) for name in _EVALUATE_OPTIONS if getattr(args, name) is not None}
    for name in ("metrics", "conditions"):
        if name in options:
            options[name] = [x.strip() for x in options[name].split(",") if x.strip()]
    if "context_key" in options and options["context_key"].lower() == "none":
        options["context_key"] = None
    if "exclude" in options and options["exclude"] not in ("targets", "own"):
        text = options["exclude"]
        options["exclude"] = None if text.lower() == "none" else [g.strip() for g in text.split(",") if g.strip()]
    de_options = {k: False for k in ("tie_correction", "continuity") if getattr(args, f"no_{k}")}
    if de_options:
        options["de_options"] = de_options
    return options


_PYTHON_OPTION = re.compile(r"\b(" + "|".join([*_EVALUATE_OPTIONS, "parity", "baseline", "min_cells", "n_boot", "model",
                                              "out_dir", "de_options"]) + r")=( ?)(?=(.?))")


def _cli_spelling(message: str) -> str:
    """An error message with the library's option names (``perturbation_key=``, ``ties='x'``) written as the
    command's (``--perturbation-key``, ``--ties 'x'``).

    Examples
    --------
    >>> _cli_spelling("Pass the names with perturbation_key= / context_key=None, or ties='mid'.")
    "Pass the names with --perturbation-key / --context-key None, or --ties 'mid'."
    """
    def option(m: re.Match) -> str:
        value_follows = m.group(3) not in ("", " ", ".", ",", ";", ")") or m.group(2) == " "
        return f"--{m.group(1).replace('_', '-')}" + (" " if value_follows else "")

    return _PYTHON_OPTION.sub(option, message)


def _number(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _evaluate(args: argparse.Namespace, argv: list[str]) -> int:
    from vclib.metrics import evaluate_files

    baseline = None if args.baseline.lower() == "none" else args.baseline
    try:
        card = evaluate_files(args.pred, args.real, out_dir=args.out_dir, parity=args.parity, baseline=baseline,
                              min_cells=args.min_cells, n_boot=args.n_boot, seed=args.seed, model=args.model,
                              progress=not args.no_progress, command=["vclib", *argv], **_evaluate_options(args))
    except VclibInputError as err:
        print(f"vclib: {_cli_spelling(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nvclib: interrupted; {args.out_dir} holds no finished results (the command can be run again with "
              "the same -o).", file=sys.stderr)
        return 130
    head = card.headline()
    base = card.record["baseline"]["name"] or "baseline"
    shown = pd.DataFrame({
        "metric": head["metric"],
        args.model: head["mean"].map(_number),
        "95% CI": [f"[{_number(lo)}, {_number(hi)}]" if not math.isnan(lo) else ""
                   for lo, hi in zip(head["ci_low"], head["ci_high"], strict=True)],
        "n": head["n"],
        base: head["baseline"].map(_number),
        "ceiling": head["ceiling"].map(_number),
        "calibrated": head["calibrated"].map(_number),
        "note": head["note"],
    })
    print(f"\n{args.model} scored against {args.real}: mean over perturbations with bootstrap 95% CI, beside the "
          f"baseline {base} and the noise ceiling; calibrated = (u - b)/(c - b), 0 = {base}, 1 = the ceiling.")
    with pd.option_context("display.width", 250, "display.max_colwidth", 70):
        print(shown.to_string(index=False))
    print(f"\nTables and the record of this command are in {card.out_dir}/ (summary.csv, scores.csv, calibrated.csv, "
          "skipped.csv, evaluate.json).")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from vclib import loaders  # imported per command: `vclib evaluate` starts without the loaders and papermill

    folder = loaders.cache_dir(args.cache_dir)
    if args.action == "list":
        table = loaders.available(cache_dir=folder)
        table["cached"] = table["cached"].map({True: "yes", False: "-"})
        columns = ["name", "cached", "size", "contexts", "perturbation_type", "source"]
        with pd.option_context("display.max_colwidth", 45, "display.width", 250):
            print(table[columns].to_string(index=False))
        print(f"\n{len(table)} datasets; cache: {folder}. `vclib datasets get NAME` downloads one; "
              "vc.loaders.load(NAME) reads it into the data contract.")
        return 0
    try:
        paths = loaders.fetch(args.name, cache_dir=folder, progressbar=not args.no_progress)
    except VclibInputError as err:
        print(f"vclib: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def _run(args: argparse.Namespace) -> int:
    from vclib import runner

    try:
        parameters = runner.parse_parameters(args.parameter, runner.notebooks(args.notebooks))
        for option, key in [("dataset", "DATASET"), ("perturbation_key", "PERTURBATION_KEY"),
                            ("context_key", "CONTEXT_KEY"), ("control", "CONTROL"), ("values", "VALUES")]:
            value = getattr(args, option)
            if value is not None:
                parameters[key] = None if option == "context_key" and value.lower() == "none" else value
        run_dir = runner.run(parameters=parameters, results_dir=args.results, name=args.name,
                             resume=args.resume, notebooks_dir=args.notebooks, html=not args.no_html)
    except runner.Interrupted as err:
        print(f"\nvclib: {err}", file=sys.stderr)
        return 130
    except VclibInputError as err:
        print(f"vclib: {err}", file=sys.stderr)
        return 2
    print(f"Executed notebooks and HTML copies are in {run_dir}/")
    if (run_dir / runner.REPORT_FILE).exists():
        print(f"  report: {run_dir / runner.REPORT_FILE}")
    figures = runner.key_figures(run_dir)
    if figures is not None and len(figures):
        from vclib.report import figure_table

        shown = figure_table(figures[[c for c in ["split", "metric", "best_model", "best_baseline",
                                                  "beats_best_baseline", "best_learned", "learned_vs_baseline",
                                                  "learned_calibrated", "note"] if c in figures]])
        print("\nKey figures (best model and best baseline; does the best learned model beat that baseline beyond "
              "the noise, and where does it sit between the baseline (0) and the noise ceiling (1)?):")
        with pd.option_context("display.width", 200, "display.max_colwidth", 60):
            print(shown.to_string(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.command == "datasets":
        return _datasets(args)
    if args.command == "evaluate":
        return _evaluate(args, argv)
    if args.command == "external":
        return _external(args)
    return _run(args)


def _external(args: argparse.Namespace) -> int:
    from vclib import external

    try:
        folds = external.predict(args.name, args.folds, options=args.options, rebuild=args.rebuild)
    except VclibInputError as err:
        print(f"vclib: {err}", file=sys.stderr)
        return 2
    print(f"{args.name}'s predictions are in {folds / 'predictions'}/; score them with "
          f"vc.models.ExternalPredictions({str(folds)!r}).")
    return 0
