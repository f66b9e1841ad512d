"""Zero-shot transfer: a model trained on one dataset, bound to another and given the learned weights.

``recsys fit --transfer-from RUN`` binds the configured model to the new data (its text, graph and users), then
loads the finished run's learned parameters; with ``--trainer.max_epochs 0`` nothing is trained on the new data
(zero-shot), otherwise training continues from them. Only encoders that declare
:class:`~recsys.capabilities.Transfers` qualify: their learned parameters do not depend on the catalogue or users.
"""

from __future__ import annotations

from pathlib import Path

from recsys.capabilities import Transfers
from recsys.errors import CheckpointError, UsageError


def check_transfer(model, source: str | Path):
    """The finished run to transfer from, once the model is known to transfer (before any data is read).

    Raises:
        UsageError: the model's encoder does not declare ``Transfers`` (it has ID tables sized by the data).
        RunDirError, CheckpointError: ``source`` is not a finished, readable run.
    """
    from recsys.model import RecModel
    from recsys.runs import Run

    if not isinstance(model, RecModel) or model.capability(Transfers) is None:
        name = type(model.encoder).__name__ if isinstance(model, RecModel) else type(model).__name__
        raise UsageError(f"--transfer-from: {name} has parameters sized by its training data (ID tables), so it "
                         "cannot be moved to another dataset; transfer needs a text encoder (AlphaRec, LinearProbe "
                         "with user: history, Recformer)")
    return Run.open(source)


def transfer_weights(model, data, source: str | Path) -> dict:
    """Bind ``model`` to ``data`` and load the learned weights of the finished run ``source``.

    Every parameter and persistent buffer of the bound model must come from the source run with the same shape,
    except the encoder's catalogue-bound state (:meth:`~recsys.capabilities.Transfers.catalogue_state`), which is
    rebuilt from the new data; the source's other entries (an MLM head used only in pre-training) are ignored and
    counted.

    Args:
        model: an unbound ``RecModel`` built from the fit's configuration.
        data: the new dataset's ``PreparedData``.
        source: the finished run directory to transfer from.

    Returns:
        ``{"source", "loaded", "rebuilt", "ignored"}`` (counts and key lists, for ``transfer.json``).

    Raises:
        UsageError: the model's encoder does not declare ``Transfers`` (it has ID tables sized by the data).
        CheckpointError: the source run lacks a parameter of the model, or holds it in another shape (another
            architecture or size).
    """
    state = check_transfer(model, source).payload.state_dict
    model.bind(data)
    own = model.state_dict()
    rebuilt = {f"encoder.{k}" for k in model.capability(Transfers).catalogue_state()}
    missing = [k for k in own if k not in rebuilt and k not in state]
    shape = [k for k in own if k not in rebuilt and k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or shape:
        what = (f"lacks {', '.join(missing[:4])}" if missing else
                f"holds {shape[0]} as {tuple(state[shape[0]].shape)}, the model as {tuple(own[shape[0]].shape)}")
        more = len(missing) + len(shape) - 1
        raise CheckpointError(f"--transfer-from {str(source)!r}: the run {what}{f' (+{more} more)' if more else ''}"
                              "; transfer from a run of the same model configuration")
    load = {k: v for k, v in state.items() if k in own and k not in rebuilt}
    model.load_state_dict(load, strict=False)
    ignored = sorted(k for k in state if k not in own or k in rebuilt)
    return {"source": str(Path(source).resolve()), "loaded": len(load), "rebuilt": sorted(rebuilt & set(own)),
            "ignored": ignored}
