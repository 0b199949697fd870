"""Published models in environments of their own, driven through the fold protocol.

A model folder (``models/<name>/`` of the source tree) holds a pinned ``requirements.txt`` and a ``predict.py`` that
reads a folder written by :func:`vclib.splits.export` and writes one predictions file per fold. vclib creates the
model's virtual environment on first use (``python -m venv`` + ``pip install -r requirements.txt``), runs the script
in it as a subprocess (an argument list, never a shell string) and reads the answers with
:class:`vclib.models.ExternalPredictions`. The model never imports vclib, and vclib never imports the model: scGen
pins anndata 0.9, which vclib (anndata 0.10 or newer) cannot share.

Environments live in ``$VCLIB_MODEL_ENVS``, else ``.envs/`` of the source checkout (git-ignored), else the user
cache. An environment is rebuilt when its requirements change (their hash is recorded in it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from vclib.schema import VclibInputError

ENV_VAR = "VCLIB_MODEL_ENVS"
_SOURCE = Path(__file__).resolve().parents[1]
STAMP = ".vclib-requirements"


def models_dir() -> Path:
    """``models/`` of the source tree: one folder per model, with ``requirements.txt`` and ``predict.py``."""
    return _SOURCE / "models"


def available() -> list[str]:
    """Names of the models vclib can run in their own environment.

    Examples
    --------
    >>> "scgen" in available()
    True
    """
    return sorted(p.parent.name for p in models_dir().glob("*/predict.py") if (p.parent / "requirements.txt").exists())


def env_dir(name: str) -> Path:
    """Where the environment of model ``name`` is (or will be) created."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser() / name
    if os.access(_SOURCE, os.W_OK) and (_SOURCE / "pyproject.toml").exists():
        return _SOURCE / ".envs" / name
    import pooch

    return Path(pooch.os_cache("vclib")) / "envs" / name


def _model(name: str) -> Path:
    folder = models_dir() / name
    if name not in available():
        raise VclibInputError(f"no model {name!r}; models with an environment of their own: "
                              f"{', '.join(available()) or '(none)'} (folders in {models_dir()}).")
    return folder


def _python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def environment(name: str, *, rebuild: bool = False, quiet: bool = False) -> Path:
    """The Python of model ``name``'s environment, created on first use from its pinned requirements.

    Parameters
    ----------
    name
        A model of :func:`available` (e.g. ``"scgen"``).
    rebuild
        Delete the environment and create it again.
    quiet
        Do not print what is being installed.

    Raises
    ------
    VclibInputError
        When the environment cannot be created: the message names pip's log and the fix (usually: the package
        registry could not be reached).
    """
    requirements = _model(name) / "requirements.txt"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    env = env_dir(name)
    if rebuild and env.exists():
        shutil.rmtree(env)
    if (env / STAMP).exists() and (env / STAMP).read_text() == wanted and _python(env).exists():
        return _python(env)
    if env.exists():  # half-made, or made from other requirements
        shutil.rmtree(env)
    env.parent.mkdir(parents=True, exist_ok=True)
    log = env.parent / f"{name}-install.log"
    if not quiet:
        print(f"Creating {name}'s environment in {env} from {requirements} (first use; a few minutes, about 2 GB); "
              f"pip's output goes to {log}", flush=True)
    with log.open("w") as handle:
        steps = [[sys.executable, "-m", "venv", str(env)],
                 [str(_python(env)), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(requirements)]]
        for step in steps:
            done = subprocess.run(step, stdout=handle, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                shutil.rmtree(env, ignore_errors=True)
                raise VclibInputError(
                    f"could not create {name}'s environment ({' '.join(step[:4])} ... exited {done.returncode}); "
                    f"pip's log: {log}. If the package registry (PyPI) cannot be reached, run this where it can, or "
                    f"point pip at a mirror (PIP_INDEX_URL); nothing was left half-made in {env}.")
    (env / STAMP).write_text(wanted)
    return _python(env)


def predict(name: str, folds: str | Path, *, options: list[str] | None = None, rebuild: bool = False) -> Path:
    """Run model ``name`` on a folder written by :func:`vclib.splits.export`; its answers land in the folder's
    ``predictions/`` (folds answered by an earlier run are kept). Returns the folder, ready for
    ``vc.models.ExternalPredictions(folds)``.

    ``options`` are passed to the model's ``predict.py`` (e.g. ``["--epochs", "30", "--seed", "1"]``).
    """
    folds = Path(folds)
    _model(name)
    if not (folds / "manifest.json").is_file():
        raise VclibInputError(f"{str(folds)!r} is not a folder written by vc.splits.export (no manifest.json); write "
                              "one with vc.splits.export(adata, splits, folder).")
    python = environment(name, rebuild=rebuild)
    command = [str(python), str(_model(name) / "predict.py"), str(folds), *(options or [])]
    done = subprocess.run(command)
    if done.returncode != 0:
        raise VclibInputError(f"{name} failed on {folds} (exit code {done.returncode}; its messages are above). "
                              f"Folds already answered are kept in {folds / 'predictions'}; run again to resume.")
    return folds
