"""The two ways to install (pip/venv and conda) name the same dependencies; notebooks are stripped."""

import json
import re
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import ROOT

CONDA_FORGE_NAMES = {"playwright-python": "playwright"}  # conda-forge's name: PyPI's


def _name(requirement: str) -> str:
    name = re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")
    return CONDA_FORGE_NAMES.get(name, name)


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    conda_names = {_name(d) for d in conda} - {"python", "pip"}
    assert conda_names == pip_names
    assert "python=3.11" in conda
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section


def test_same_version_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pins = {_name(r): r.strip()[len(_name(r)):] for r in project["dependencies"]}
    for dep in env["dependencies"]:
        if isinstance(dep, str) and _name(dep) in pins:
            assert dep[len(_name(dep)):] == pins[_name(dep)], dep


def test_notebooks_are_committed_without_outputs():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") for c in code), f"{path.name} has outputs: run nbstripout"
        assert not any(c.get("execution_count") for c in code), f"{path.name} has execution counts"
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
        assert not any(re.search(r"^\s*(def|class) ", "".join(c["source"]), re.M) for c in code), (
            f"{path.name} defines a function or class; that belongs in vclib/"
        )


def test_notebooks_are_in_the_form_nbstripout_writes():
    """A clone with nbstripout's git filter (README, Developing) shows no notebook as modified: each committed
    notebook is byte for byte what nbstripout writes (outputs, counts and widget state stripped, cell ids numbered)."""
    import subprocess
    import sys

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        stripped = subprocess.run([sys.executable, "-m", "nbstripout", "--textconv", str(path)], capture_output=True,
                                  check=True).stdout
        assert stripped == path.read_bytes(), f"{path.name} is not as nbstripout writes it: run nbstripout {path}"


def test_jupyterlab_saves_widget_state():
    """`make venv` installs jupyter-config/lab-settings.json as this environment's JupyterLab setting: notebooks are
    saved with their widget state, so a reopened notebook shows its widgets, not "model not found" (the browser test
    checks the effect)."""
    from jupyterlab.commands import get_app_dir

    committed = json.loads((ROOT / "jupyter-config" / "lab-settings.json").read_text())
    assert committed["@jupyter-widgets/jupyterlab-manager:plugin"]["saveState"] is True
    installed = Path(get_app_dir()) / "settings" / "overrides.d" / "vclib.json"
    if not installed.exists():
        pytest.skip(f"{installed} absent: this environment was not made by `make venv`")
    assert json.loads(installed.read_text()) == committed


def test_import_loads_no_notebook_or_plotting_stack():
    """`import vclib` (and scoring) must not pay for papermill, nbconvert, ipywidgets or the plotting stack: they
    load when a module that needs them is first used. Checked in a fresh interpreter, on sys.modules, not a time."""
    import subprocess
    import sys

    heavy = ["papermill", "nbconvert", "ipywidgets", "seaborn", "matplotlib", "scanpy"]
    code = (f"import sys, vclib\nbare = [m for m in {heavy!r} if m in sys.modules]\n"
            "vclib.metrics.evaluate, vclib.benchmark.run\n"
            f"scoring = [m for m in {heavy!r} if m in sys.modules]\n"
            "vclib.pl\nprint(bare, scoring, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] [] True"  # the last: vc.pl does load matplotlib, so the check can see a module arrive
