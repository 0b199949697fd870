"""scGen through vclib's fold protocol: train on each fold's cells, predict its test conditions, write the answers.

Runs in scGen's own environment (``requirements.txt`` beside this file) and never imports vclib: it reads what
``vc.splits.export`` wrote (``manifest.json``, ``<fold>/train.h5ad``, ``<fold>/test.csv``) and writes
``predictions/<fold>.h5ad`` for ``vc.models.ExternalPredictions``.

scGen (Lotfollahi, Wolf & Theis, Nat Methods 2019) predicts a perturbation in a context by latent arithmetic: the
mean latent shift between the perturbation's cells and the control cells of the contexts where it was measured,
added to the target context's control cells and decoded. A test condition whose perturbation no training context
measured has no shift to add: scGen does not apply to it, and the file says so (``uns["not_applicable"]``) instead
of guessing. scGen's ``predict`` subsamples cells with numpy's global random state, so the predictions are samples:
they are reproducible only with the seed set before every call, as done here, and the file records the seed.

Usage: ``python predict.py FOLDS [--epochs 100] [--batch-size 32] [--patience 25] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

CONTROL = "control"


def predict_fold(train: ad.AnnData, test: pd.DataFrame, *, epochs: int, batch_size: int, patience: int,
                 seed: int) -> ad.AnnData:
    """scGen trained on ``train`` (contract columns ``perturbation``, ``context``), predictions for ``test``."""
    measured = set(train.obs["perturbation"].astype(str)) - {CONTROL}
    applicable = test["perturbation"].isin(measured).to_numpy()
    data = ad.AnnData(X=sparse.csr_matrix(train.X, dtype=np.float32), var=train.var[[]].copy(),
                      obs=pd.DataFrame({"condition": train.obs["perturbation"].astype(str).to_numpy(),
                                        "cell_type": train.obs["context"].astype(str).to_numpy()},
                                       index=train.obs_names.astype(str)))
    start = time.perf_counter()
    epochs_trained = 0
    parts = []
    if applicable.any():
        import scgen
        import scvi

        scvi.settings.seed = seed
        scgen.SCGEN.setup_anndata(data, batch_key="condition", labels_key="cell_type")
        model = scgen.SCGEN(data)
        model.train(max_epochs=epochs, batch_size=batch_size, early_stopping=True,
                    early_stopping_patience=patience)
        epochs_trained = len(model.history["elbo_train"])
        for context, perturbation in test.loc[applicable, ["context", "perturbation"]].itertuples(index=False):
            np.random.seed(seed)  # noqa: NPY002 - scGen's predict() draws from numpy's global state: seeded per call
            predicted, _ = model.predict(ctrl_key=CONTROL, stim_key=perturbation, celltype_to_predict=context)
            X = np.asarray(predicted.X.toarray() if sparse.issparse(predicted.X) else predicted.X, dtype=np.float32)
            parts.append(ad.AnnData(X=np.clip(X, 0, None), var=data.var[[]].copy(), obs=pd.DataFrame(
                {"context": context, "perturbation": perturbation},
                index=[f"{context}|{perturbation}|{i}" for i in range(len(X))])))
    out = ad.concat(parts) if parts else ad.AnnData(X=np.zeros((0, data.n_vars), dtype=np.float32),
                                                    var=data.var[[]].copy(),
                                                    obs=pd.DataFrame(columns=["context", "perturbation"]))
    # plain object indexes and categorical labels: what every anndata version writes and reads
    out.var = pd.DataFrame(index=pd.Index([str(g) for g in data.var_names], dtype=object))
    out.obs = pd.DataFrame({k: pd.Categorical(out.obs[k].astype(str)) for k in ("context", "perturbation")},
                           index=pd.Index([str(i) for i in out.obs_names], dtype=object))
    declined = test.loc[~applicable, ["context", "perturbation"]]
    out.uns["model"] = {"name": "scgen", "seed": seed, "sampled": True, "epochs": epochs,
                        "epochs_trained": epochs_trained, "batch_size": batch_size,
                        "train_seconds": round(time.perf_counter() - start, 2)}
    if len(declined):
        out.uns["not_applicable"] = {
            "conditions": [f"{c}|{p}" for c, p in declined.itertuples(index=False)],
            "reason": "scGen adds the latent shift a perturbation made in the contexts that measured it; no training "
                      "context measured these perturbations"}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folds", type=Path, help="a folder written by vc.splits.export")
    parser.add_argument("--epochs", type=int, default=100, help="most training epochs (early stopping ends sooner)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patience", type=int, default=25, help="epochs without improvement before stopping")
    parser.add_argument("--seed", type=int, default=0, help="scvi-tools' seed and numpy's before every predict()")
    args = parser.parse_args(argv)
    manifest = json.loads((args.folds / "manifest.json").read_text())
    for fold in manifest["folds"]:
        target = args.folds / "predictions" / f"{fold['folder']}.h5ad"
        if target.exists():  # answered by an earlier run: a rerun resumes
            print(f"{fold['folder']}: done before", flush=True)
            continue
        train = ad.read_h5ad(args.folds / fold["folder"] / "train.h5ad")
        test = pd.read_csv(args.folds / fold["folder"] / "test.csv", dtype={"context": str, "perturbation": str})
        out = predict_fold(train, test, epochs=args.epochs, batch_size=args.batch_size, patience=args.patience,
                           seed=args.seed)
        partial = target.with_name(f".partial-{target.name}")
        out.write_h5ad(partial)
        partial.replace(target)  # a fold counts as answered only once its file is complete
        info = out.uns["model"]
        print(f"{fold['folder']}: {out.n_obs} cells predicted for {len(test)} conditions "
              f"({len(out.uns.get('not_applicable', {}).get('conditions', []))} not applicable), "
              f"{info['epochs_trained']} epochs, {info['train_seconds']} s", flush=True)


if __name__ == "__main__":
    main()
