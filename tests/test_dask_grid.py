"""The distributed benchmark grid (issue 13): with a distributed.Client each (model, fold, seed) cell is a task, the
cell files are the only shared state, and the results equal the serial run's. Each test builds its own two-process
LocalCluster and closes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

import vclib as vc
from vclib.schema import VclibInputError

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module

OPTIONS = {"splits": ["unseen_perturbation", "unseen_context"], "metrics": ["mse_delta", "pearson_delta",
                                                                          "overlap_at_N"],
           "split_options": {"unseen_perturbation": {"n_folds": 3}}, "progress": False}


class Probe(vc.baselines.TrainingMean):
    """The training mean, which appends ``tag|split|fold|seed|pid`` to the file ``log`` on every fit; while the file
    ``log + ".victim"`` exists, the first fit that finds two fits logged before its own takes that file and kills
    its own process (the worker's). With one task at a time per worker, at least one of those two cells is finished
    by then: the kill comes mid-grid, whatever order the scheduler runs the cells in."""

    def __init__(self, log: str = "", tag: str = "", split: str = "", fold: str = "", seed: int = 0):
        self.log = log
        self.tag = tag
        self.split = split
        self.fold = fold
        self.seed = seed

    def select(self, split: str, fold: str) -> Probe:
        """Bound to a split fold by vc.benchmark.run, so the fit knows its cell."""
        return Probe(log=self.log, tag=self.tag, split=split, fold=fold, seed=self.seed)

    def fit(self, train):
        cell = f"{self.tag}|{self.split}|{self.fold}|{self.seed}"
        before = len(_fits(Path(self.log)))
        with open(self.log, "a") as f:
            f.write(f"{cell}|{os.getpid()}\n")
        victim = Path(self.log + ".victim")
        if before >= 2 and victim.exists():
            try:
                victim.unlink()  # only one fit takes it
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().fit(train)


def _fits(log: Path) -> list[tuple[str, int]]:
    """(cell, pid) of every fit, in order."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [(line.rsplit("|", 1)[0], int(line.rsplit("|", 1)[1])) for line in lines]


@pytest.fixture(scope="module")
def screen():
    return vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_combinations=0, n_genes=40, cells_per_condition=10,
                               control_cells=20, seed=3)


@pytest.fixture
def client():
    """A LocalCluster of two worker processes (one thread each), closed after the test."""
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    try:
        with distributed.Client(cluster) as c:
            yield c
    finally:
        cluster.close()


def _same_run(a: Path, b: Path) -> None:
    """Two results folders hold the same cells (scores byte for byte, predictions equal) and the same tables."""
    for name in ("run_index.csv", "identical_models.csv", "skipped.csv", "splits.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    scores = sorted(p.name for p in (a / "cells").glob("*.csv"))
    assert scores == sorted(p.name for p in (b / "cells").glob("*.csv"))
    for name in scores:
        assert (a / "cells" / name).read_bytes() == (b / "cells" / name).read_bytes(), name
    pa, pb = vc.benchmark.load_predictions(a), vc.benchmark.load_predictions(b)
    assert list(pa.obs_names) == list(pb.obs_names)
    assert (pa.X == pb.X).all()
    pd.testing.assert_frame_equal(pa.uns["scored_against"], pb.uns["scored_against"])


def _same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for key in ("skipped", "notes"):
        assert a.attrs[key] == b.attrs[key], key
    pd.testing.assert_frame_equal(a.attrs["identical"], b.attrs["identical"])


def test_a_worker_killed_mid_grid_redoes_only_its_cell(screen, client, tmp_path):
    log = tmp_path / "fits.log"
    models = {"a": Probe(log=str(log), tag="a"), "b": Probe(log=str(log), tag="b")}
    serial = vc.benchmark.run(screen, models=models, results_dir=tmp_path / "serial", **OPTIONS)
    cells = [c for c, _ in _fits(log)]
    assert len(cells) == len(set(cells)) == 2 * 5  # 2 models x (3 folds of unseen_perturbation + 2 unseen_context)
    log.unlink()

    Path(str(log) + ".victim").touch()
    table = vc.benchmark.run(screen, models=models, results_dir=tmp_path / "grid", client=client, **OPTIONS)

    assert not Path(str(log) + ".victim").exists()  # a worker was killed
    fits = _fits(log)
    victim, (killed_pid, second_pid) = fits[2][0], [pid for c, pid in fits if c == fits[2][0]]
    # the killed cell fitted again, by another process; every other cell once: those finished before the kill too,
    # even when their result was lost with the worker before the client had it (the task re-run reads the files)
    assert Counter(c for c, _ in fits) == {c: 2 if c == victim else 1 for c in cells}
    assert second_pid != killed_pid
    with pytest.raises(ProcessLookupError):
        os.kill(killed_pid, 0)  # that worker process is gone
    assert not list((tmp_path / "grid" / "cells").glob("*.tmp"))
    _same_table(table, serial)
    _same_run(tmp_path / "serial", tmp_path / "grid")


def test_cells_in_the_cache_are_read_not_recomputed_on_the_cluster(screen, client, tmp_path):
    log = tmp_path / "fits.log"
    models = {"probe": Probe(log=str(log), tag="probe"), "training_mean": vc.baselines.TrainingMean()}
    first = vc.benchmark.run(screen, models=models, results_dir=tmp_path / "run", **OPTIONS)
    index = pd.read_csv(tmp_path / "run" / "run_index.csv", dtype={"fold": str})
    gone = index[index["model"] == "probe"].iloc[[1, 3]]
    for name in gone["scores"]:
        (tmp_path / "run" / "cells" / name).unlink()  # as if the run had stopped before these two cells
    log.unlink()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "cells").glob("*.csv")}

    again = vc.benchmark.run(screen, models=models, results_dir=tmp_path / "run", client=client, **OPTIONS)

    assert sorted(c for c, _ in _fits(log)) == sorted(f"probe|{r.split}|{r.fold}|{r.seed}" for r in gone.itertuples())
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # the finished cells were not rewritten
    _same_table(again, first)


class Failing(vc.baselines.TrainingMean):
    """The training mean, except on the split fold ``fold``, where fit raises."""

    def __init__(self, fold: str = "", bound: str = ""):
        self.fold = fold
        self.bound = bound

    def select(self, split: str, fold: str) -> Failing:
        return Failing(fold=self.fold, bound=fold)

    def fit(self, train):
        if self.bound == self.fold:
            raise VclibInputError(f"cannot fit on fold {self.bound}")
        return super().fit(train)


def test_an_error_in_a_cell_is_raised_and_the_finished_cells_kept(screen, client, tmp_path):
    models = {"failing": Failing(fold="C2"), "training_mean": vc.baselines.TrainingMean()}
    options = {**OPTIONS, "splits": ["unseen_context"], "include_ceiling": False}
    with pytest.raises(VclibInputError, match="cannot fit on fold C2"):
        vc.benchmark.run(screen, models=models, results_dir=tmp_path, client=client, **options)
    # (model, fold) of the cells written: the grid's third cell failed, so one of the first two was finished
    finished = {tuple(p.name.split("__")[0:3:2]) for p in (tmp_path / "cells").glob("*.csv")}
    assert finished and ("failing", "C2") not in finished
    assert finished <= {("failing", "C1"), ("training_mean", "C1"), ("training_mean", "C2")}


def test_without_results_dir_the_cluster_gives_the_serial_table(screen, client):
    models = ["training_mean", "linear"]
    _same_table(vc.benchmark.run(screen, models=models, client=client, seeds=[0, 1], **OPTIONS),
                vc.benchmark.run(screen, models=models, seeds=[0, 1], **OPTIONS))


def test_client_must_be_a_distributed_client(screen):
    with pytest.raises(VclibInputError, match="client= takes a distributed.Client .* got str"):
        vc.benchmark.run(screen, models=["training_mean"], client="tcp://127.0.0.1:8786", **OPTIONS)


def test_the_serial_grid_never_needs_dask(tmp_path):
    """client=None runs the grid and loads its predictions with dask and distributed unimportable."""
    code = f"""
import sys
import vclib as vc
assert "distributed" not in sys.modules, "import vclib imported distributed"
sys.modules["dask"] = sys.modules["distributed"] = None  # importing them now raises ImportError
adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=30, cells_per_condition=8)
vc.benchmark.run(adata, models=["training_mean"], metrics=["mse_delta"], progress=False, results_dir={str(tmp_path)!r})
print("ok", vc.benchmark.load_predictions({str(tmp_path)!r}, model="training_mean").n_obs > 0)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok True"
