"""2D Matryoshka: text encoders served from their first ``l`` transformer layers as well as a prefix of dimensions.

Li et al., "2D Matryoshka Sentence Embeddings" (2DMSE), 2024, arXiv 2402.14776: at every training step the loss is
computed at the last layer and at one shallower layer drawn at random, each nested over dimension prefixes
(Matryoshka, Kusupati et al., NeurIPS 2022), so that any (layers, dims) point ranks on its own. Here:

* an encoder that can embed from fewer layers declares :class:`Layered` (AlphaRec's frozen LM, Recformer's
  Longformer);
* :class:`recsys.training.layer_sampling.SampledLayer` (``RecModel``'s ``negatives``) embeds each training batch at
  the last layer and at a drawn shallower one and scores both, so ``RecModel``'s loss, nested or not
  (``MatryoshkaLoss`` for the dimensions), covers both layers;
* the encoder's ``serve_layer`` option picks the served depth, ``--index prefix:dim=D`` (or the
  :class:`~recsys.encoders.Matryoshka` wrapper) the served dimensions.

The 2DMSE alignment term (KL between shallow and last-layer similarities) is not used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from recsys.errors import UsageError

__all__ = ["Layered", "check_layers", "layered_encoder"]


class Layered:
    """The encoder embeds from the first ``l`` layers of its transformer, for any ``1 <= l <= depth()``.

    Called by: :class:`~recsys.training.layer_sampling.SampledLayer` at every training step (``at_layer`` around
    each of the batch's two embeddings), and by serving code that switches the served depth (``set_serve_layer``).
    Subclasses implement :meth:`depth` and :meth:`train_layers` and read :meth:`layer` wherever they embed.
    """

    #: the served depth (None: all layers); a constructor option of the subclass.
    serve_layer: int | None = None
    # A training step's depth, set only inside `at_layer` (None outside).
    _step_layer: int | None = None

    def depth(self) -> int:
        """The transformer's number of layers (known once bound)."""
        raise NotImplementedError

    def train_layers(self) -> Sequence[int]:
        """The shallower layers a training step may draw (each ``< depth()``)."""
        raise NotImplementedError

    def layer(self) -> int:
        """The layer the encoder embeds from now: the step's (inside :meth:`at_layer`), else ``serve_layer``, else
        ``depth()``."""
        return self._step_layer or self.serve_layer or self.depth()

    def in_shallow_step(self) -> bool:
        """Inside a 2D training step's shallow pass (its extra loss terms are not counted: skip computing them)."""
        return self._step_layer is not None and self._step_layer < self.depth()

    def set_serve_layer(self, layer: int | None) -> None:
        """Serve from the first ``layer`` layers from now on (None: all); drops any cached tables.

        Raises:
            UsageError: ``layer`` is outside ``[1, depth()]`` or was not prepared at bind.
        """
        check_layers(type(self).__name__, None, layer, self.depth())
        self.serve_layer = layer
        self.clear_cache()

    @contextmanager
    def at_layer(self, layer: int) -> Iterator[None]:
        """Embed from the first ``layer`` layers inside the block (one training step's embedding)."""
        prev, self._step_layer = self._step_layer, layer
        try:
            yield
        finally:
            self._step_layer = prev


def layered_encoder(encoder) -> Layered:
    """``encoder`` itself, or the :class:`Layered` encoder inside its wrappers (a Matryoshka prefix around it).

    Raises:
        UsageError: no encoder in the chain declares :class:`Layered`.
    """
    from recsys.encoders.wrapper import EncoderWrapper

    enc = encoder
    while not isinstance(enc, Layered) and isinstance(enc, EncoderWrapper):
        enc = enc.encoder
    if not isinstance(enc, Layered):
        raise UsageError(f"model.init_args.negatives SampledLayer needs an encoder that embeds from fewer layers "
                         f"(AlphaRec, Recformer); {type(encoder).__name__} does not")
    return enc


def check_layers(owner: str, lm_layers: Sequence[int] | None, serve_layer: int | None,
                 depth: int | None = None) -> list[int]:
    """Validate ``lm_layers`` and ``serve_layer`` (positive, and within ``depth`` when known): the sorted layers.

    Raises:
        UsageError: one line naming the option.
    """
    layers = [] if lm_layers is None else list(lm_layers)
    for name, values in (("lm_layers", layers), ("serve_layer", [] if serve_layer is None else [serve_layer])):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (depth is not None and v > depth):
                bound = f"[1, {depth}] (the LM's layers)" if depth is not None else "integers >= 1"
                raise UsageError(f"{owner} {name} must be in {bound}, got {v!r}")
    return sorted(set(layers))
