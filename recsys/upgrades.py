"""Backward-compatible upgrades of finished runs: BT²'s basis transformation fitted after training.

``python -m recsys.upgrades NEW_RUN OLD_RUN OUT_RUN [--fit-on items|users|both] [--orthogonality λ]`` writes a
servable run whose encoder is the new run's, wrapped in :class:`recsys.encoders.BasisTransformation` fitted on the
paired embeddings of the two runs (:func:`recsys.encoders.compatible.fit_basis`). Serving layer: it reads and writes
run directories, which the encoders must not import.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys.encoders.compatible import basis_residual, fit_basis
from recsys.errors import UsageError

__all__ = ["fit_basis_run"]


def fit_basis_run(new_run, old_run, out, fit_on: str = "items", orthogonality: float = 1.0, steps: int = 500,
                  overwrite: bool = False) -> dict:
    """Fit BT²'s basis transformation between two finished runs and write the new model, so wrapped, to ``out``.

    ``out`` is a copy of ``new_run`` whose config wraps the encoder in :class:`BasisTransformation` and whose
    ``model.pt`` serves ``[W'·x, C·x]`` (the Lightning checkpoint of the unwrapped model is dropped: it no longer
    fits the config). ``recsys evaluate --run-dir OUT`` is the new→new protocol (identical to ``new_run``'s), and
    ``recsys evaluate --run-dir OUT --gallery OLD_RUN`` the new→old one. ``OUT/basis_transformation.json`` records
    the fit (pairs, λ, residuals).

    Args:
        new_run: the independently trained new run.
        old_run: the old run (same prepared data: same users and items).
        out: the run directory to write.
        fit_on: which paired rows to fit on: ``items`` (the training items), ``users`` (the training users) or
            ``both``.
        orthogonality: λ of :func:`fit_basis`.
        steps: L-BFGS iterations of :func:`fit_basis`.
        overwrite: replace ``out`` when it exists.

    Raises:
        UsageError: an option value is out of range.
        DataError: the runs' catalogues or users differ, or a run stores no tables.
    """
    import yaml

    from recsys.config import instantiate_model
    from recsys.errors import DataError
    from recsys.runs import Run

    if fit_on not in ("items", "users", "both"):
        raise UsageError(f"--fit-on must be 'items', 'users' or 'both', got {fit_on!r}")
    new, old = Run.open(new_run), Run.open(old_run)
    old_items = old.item_table_for(new.vocab("item"))
    tables = new.checked_payload().tables
    if tables is None:
        raise DataError("the new run stores no embedding tables (not an embedding model)", file=str(new.path))
    new_queries, new_items = tables
    users, items = new.train_pairs()
    pairs_new, pairs_old = [], []
    if fit_on in ("items", "both"):
        rows = torch.from_numpy(np.unique(items))
        pairs_new.append(new_items[rows])
        pairs_old.append(old_items[rows])
    if fit_on in ("users", "both"):
        old_queries = old.checked_payload().tables[0]
        a, b = old.vocab("user").ids, new.vocab("user").ids
        if len(a) != len(b) or not bool((a == b).all()):
            raise DataError("the old run's user vocabulary differs from the new run's: use --fit-on items",
                            file=str(old.path))
        rows = torch.from_numpy(np.unique(users))
        pairs_new.append(new_queries[rows])
        pairs_old.append(old_queries[rows])
    x, y = torch.cat(pairs_new), torch.cat(pairs_old)
    w = fit_basis(x, y, orthogonality, steps)

    config = new.config_dict()
    enc = config["model"]["init_args"]["encoder"]
    config["model"]["init_args"]["encoder"] = {
        "class_path": "recsys.encoders.BasisTransformation",
        "init_args": {"encoder": enc, "old_dim": int(old_items.shape[1]), "old_run": str(old_run)}}
    text = yaml.safe_dump(config, sort_keys=False)
    model = instantiate_model(text, "the basis-transformed config")
    dest = new.save(out, overwrite=overwrite)
    import shutil

    shutil.rmtree(dest.checkpoints_dir, ignore_errors=True)
    dest = Run.create(dest.path, text)
    data = dest.data()
    model.bind(data)
    state = {(f"encoder.{k}" if k.startswith("encoder.") else k): v for k, v in new.payload.state_dict.items()}
    wrapper = model.encoder
    state.update({"encoder.map": wrapper.map, "encoder.complement": wrapper.complement})
    model.load_state_dict(state, strict=True)
    wrapper.set_map(w)
    model.eval()
    dest.save_model(model, data)
    report = {"new_run": str(new_run), "old_run": str(old_run), "fit_on": fit_on, "orthogonality": orthogonality,
              "pairs": int(len(x)), "residual": basis_residual(x, y, w),
              "residual_items": basis_residual(new_items[torch.from_numpy(np.unique(items))],
                                               old_items[torch.from_numpy(np.unique(items))], w),
              # The same residual with no map (shared leading coordinates): how far apart the spaces start.
              "identity_residual": basis_residual(x, y, torch.eye(y.shape[1], x.shape[1]))}
    dest.write_json("basis_transformation.json", report)
    return report


def _main(argv=None) -> int:
    """``python -m recsys.upgrades NEW OLD OUT``: :func:`fit_basis_run` from the command line."""
    import argparse
    import json
    import sys

    from recsys.errors import RecsysError

    p = argparse.ArgumentParser(prog="python -m recsys.upgrades",
                                description="Fit BT²'s basis transformation of an independently trained new run "
                                            "onto an old run, writing a servable run directory.")
    p.add_argument("new_run")
    p.add_argument("old_run")
    p.add_argument("out")
    p.add_argument("--fit-on", default="items", help="items, users or both (default items)")
    p.add_argument("--orthogonality", type=float, default=1.0, help="orthogonality regulariser weight (default 1)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    try:
        report = fit_basis_run(a.new_run, a.old_run, a.out, a.fit_on, a.orthogonality, a.steps, a.overwrite)
    except RecsysError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
