"""Run directories: what ``recsys fit`` writes and what ``evaluate`` / ``score`` / ``export`` read back.

Layout::

    RUN/config.yaml          the fully resolved configuration
    RUN/model.pt             {"state_dict", "tables"?}: loads with torch.load(weights_only=True)
    RUN/data/                vocabularies, the split, side tables (Parquet)
    RUN/checkpoints/         Lightning's best checkpoint (trained models)
    RUN/logs/                CSV training logs (or the configured logger's)
    RUN/metrics.json         test metrics, flat {"ndcg@20": ...}
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from recsys.errors import CheckpointError, RunDirError

MODEL_FILE = "model.pt"


def require_run_dir(run_dir: str | Path, *files: str) -> Path:
    """The run directory as a Path, or a RunDirError naming what is missing."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"run directory {str(d)!r} does not exist (pass --run-dir of a finished `recsys fit`)")
    for f in files:
        if not (d / f).exists():
            raise RunDirError(f"run directory {str(d)!r} has no {f!r}; was `recsys fit` run to completion there?")
    return d


def read_config(run_dir: Path) -> dict:
    import yaml

    with open(run_dir / "config.yaml") as f:
        return yaml.safe_load(f)


def instantiate(spec):
    """Build objects from ``class_path`` / ``init_args`` dicts, recursively (the format jsonargparse writes).

    This avoids importing jsonargparse and Lightning on the scoring path; fitting uses jsonargparse itself.
    """
    if isinstance(spec, list):
        return [instantiate(s) for s in spec]
    if isinstance(spec, dict):
        if "class_path" in spec:
            module, _, name = spec["class_path"].rpartition(".")
            cls = getattr(importlib.import_module(module), name)
            args = {k: instantiate(v) for k, v in (spec.get("init_args") or {}).items()}
            return cls(**args)
        return {k: instantiate(v) for k, v in spec.items()}
    return spec


def load_checkpoint(path: Path) -> dict:
    """``torch.load(weights_only=True)`` with a clear error for truncated or corrupted files."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: it is truncated, corrupted or not a recsys "
                              f"checkpoint ({type(e).__name__}: {e})") from e


class LoadedModel(torch.nn.Module):
    """The scoring part of a trained ``RecModel`` (encoder + scorer), rebuilt without Lightning."""

    def __init__(self, encoder, scorer) -> None:
        super().__init__()
        self.encoder, self.scorer = encoder, scorer


def load_model(run_dir: str | Path, data=None):
    """Rebuild a trained model from a run directory, bound to its data, with its trained weights.

    Returns a ``Baseline`` (fitted outside Lightning) or a ``LoadedModel`` (encoder + scorer of a ``RecModel``).
    """
    d = require_run_dir(run_dir, "config.yaml", MODEL_FILE)
    if data is None:
        from recsys.data.prepared import PreparedData

        data = PreparedData.load(d / "data")
    spec = read_config(d)["model"]
    ckpt = load_checkpoint(d / MODEL_FILE)
    if spec["class_path"].endswith("RecModel"):
        args = spec.get("init_args") or {}
        from recsys.scorers import DotScorer

        scorer = instantiate(args["scorer"]) if args.get("scorer") else DotScorer()
        model = LoadedModel(instantiate(args["encoder"]), scorer)
        model.encoder.bind(data)
        state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(("encoder.", "scorer."))}
    else:
        model = instantiate(spec)
        state = ckpt["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(d / MODEL_FILE)!r} does not match the configured model: {e}") from e
    if hasattr(model, "bind") and not isinstance(model, LoadedModel):
        model.bind(data)
    model.eval()
    return model, data
