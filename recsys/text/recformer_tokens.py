"""Recformer's tokenisation: items as key/value token runs, sequences as reversed item runs after ``<s>``.

Li et al., "Text Is All You Need: Learning Language Representations for Sequential Recommendation" (Recformer),
KDD 2023; official code ``AaronHeee/RecFormer`` (``recformer/tokenization.py``). An item is the concatenation, over
its first ``max_attr_num`` attributes, of the attribute's key tokens then its value tokens, each attribute cut to
``max_attr_length`` tokens. A sequence is ``<s>`` followed by its items *most recent first*, cut to ``max_items``
items and then to ``max_token_num`` tokens. Per token:

* token type: 0 ``<s>``, 1 key, 2 value, 3 padding;
* item position: 0 for ``<s>``, then 1..n for the n-th most recent item (padding: 0, it is masked anyway).

Items are tokenised once into padded arrays (:class:`ItemTokens`, cached per tokenizer, options and texts);
sequences are assembled from them by vectorised gathers (:func:`sequence_inputs`), so a batch costs no Python loop
over items. :func:`encode_sequence` is the plain per-item reference the vectorised path is tested against.

The (key, value) pairs come from :func:`recsys.text.flatten.item_attributes`, the same attribute flattening the
other text encoders read (no ``:`` separator: keys and values are separate token runs, as in the official code).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["TYPE_BOS", "TYPE_KEY", "TYPE_VALUE", "TYPE_PAD", "TokenOptions", "ItemTokens", "RecformerTokenizer",
           "encode_sequence", "sequence_inputs", "item_inputs"]

TYPE_BOS, TYPE_KEY, TYPE_VALUE, TYPE_PAD = 0, 1, 2, 3

# In-process cache of tokenised catalogues: binding the same data twice (fit, then evaluate) tokenises once.
_CACHE: OrderedDict[str, ItemTokens] = OrderedDict()
_CACHE_SIZE = 8


@dataclass
class TokenOptions:
    """How items and sequences are cut into tokens (the official fine-tuning values are the defaults).

    Args:
        attributes: item-table columns in order (None = every column but the ``item`` key, in table order); the first
            ``max_attr_num`` non-empty ones are used per item.
        max_attr_num: attributes per item.
        max_attr_length: tokens per attribute (key + value).
        max_items: most recent history items per sequence (the official ``max_item_embeddings - 1``).
        max_token_num: tokens per sequence, ``<s>`` included.
    """

    attributes: list[str] | None = None
    max_attr_num: int = 3
    max_attr_length: int = 32
    max_items: int = 50
    max_token_num: int = 1024


@dataclass
class ItemTokens:
    """The tokenised catalogue: row i is item row i, right-padded.

    Shapes:
        ids, types: [n_items, A] int64 (padding: pad id, type 3); lens: [n_items] int64
    """

    ids: Tensor
    types: Tensor
    lens: Tensor

    def __len__(self) -> int:
        return len(self.lens)

    def to(self, device) -> ItemTokens:
        return ItemTokens(self.ids.to(device), self.types.to(device), self.lens.to(device))


class RecformerTokenizer:
    """Wraps a Hugging Face tokenizer with Recformer's item and sequence layout.

    Args:
        tokenizer: a Hugging Face tokenizer (``tokenizer(texts, add_special_tokens=False)["input_ids"]``).
        options: :class:`TokenOptions`.

    ``<s>`` is the tokenizer's BOS token, else its CLS token (BERT-family vocabularies have no ``<s>``).
    """

    def __init__(self, tokenizer, options: TokenOptions | None = None) -> None:
        self.tokenizer = tokenizer
        self.options = options or TokenOptions()
        bos = tokenizer.bos_token_id if getattr(tokenizer, "bos_token_id", None) is not None else None
        self.bos_id = bos if bos is not None else tokenizer.cls_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.mask_id = tokenizer.mask_token_id
        if self.bos_id is None:
            raise ValueError("the tokenizer has neither a BOS nor a CLS token for Recformer's <s>")
        self.vocab_size = len(tokenizer)
        # Special ids are never MLM targets.
        self.special_ids = sorted({i for i in tokenizer.all_special_ids if i is not None})

    def continues_word(self) -> Tensor:
        """Per vocabulary id: does the token continue the word before it (whole-word masking's word pieces)?

        WordPiece vocabularies (BERT, MiniLM) mark continuations with ``##``; byte-level BPE and SentencePiece ones
        (RoBERTa, Longformer) mark word starts with ``Ġ``/``▁``, and a token starting with punctuation starts a word
        (the official collator's ``_is_subword`` rule). Key and value strings are tokenised apart, so their first
        tokens start words whatever this says (see ``Recformer``'s MLM).

        Shapes:
            -> [vocab_size] bool
        """
        import unicodedata

        tokens = [str(t) for t in self.tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))]
        if any(t.startswith("##") for t in tokens):
            return torch.tensor([t.startswith("##") for t in tokens])

        def punct(c: str) -> bool:
            return unicodedata.category(c).startswith("P") or (c.isascii() and not c.isalnum() and c.isprintable())

        return torch.tensor([bool(t) and not t.startswith(("Ġ", "▁")) and not punct(t[0]) for t in tokens])

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return list(self.tokenizer(list(texts), add_special_tokens=False)["input_ids"])

    def encode_item(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """One item's token ids and type ids (the official ``encode_item``)."""
        return self.encode_items([pairs]).row(0)

    def encode_items(self, items: Sequence[Sequence[tuple[str, str]]]) -> _Encoded:
        """Token ids and types of many items, tokenising each distinct key and value string once."""
        o = self.options
        items = [list(p)[:o.max_attr_num] for p in items]
        strings = sorted({s for pairs in items for kv in pairs for s in kv})
        ids = dict(zip(strings, self._ids(strings)))
        rows_ids, rows_types = [], []
        for pairs in items:
            toks, types = [], []
            for key, value in pairs:
                k, v = ids[key], ids[value]
                toks += (k + v)[:o.max_attr_length]
                types += ([TYPE_KEY] * len(k) + [TYPE_VALUE] * len(v))[:o.max_attr_length]
            rows_ids.append(toks)
            rows_types.append(types)
        return _Encoded(rows_ids, rows_types)

    def item_tokens(self, table, cache_dir: str | Path | None = None) -> ItemTokens:
        """Tokenise every row of an item side table, cached in memory (and on disk under ``cache_dir``).

        The cache key hashes the tokenizer's vocabulary, the options and the (key, value) pairs, so any change is a
        miss.

        Shapes:
            table: [N rows] -> ItemTokens with N rows
        """
        from recsys.text.flatten import item_attributes

        o = self.options
        # A word is at least one token, so cutting values to max_attr_length words never drops a kept token.
        pairs = item_attributes(table, o.attributes, max_words_per_attribute=o.max_attr_length, max_words=None)
        key = self._cache_key(pairs)
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        path = Path(cache_dir) / f"recformer-items-{key}.npz" if cache_dir is not None else None
        if path is not None and path.exists():
            z = np.load(path)
            out = ItemTokens(torch.from_numpy(z["ids"]), torch.from_numpy(z["types"]), torch.from_numpy(z["lens"]))
        else:
            out = self.encode_items(pairs).padded(self.pad_id)
            if path is not None:
                from recsys.io_utils import atomic_path

                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.savez(f, ids=out.ids.numpy(), types=out.types.numpy(), lens=out.lens.numpy())
        _CACHE[key] = out
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return out

    def _cache_key(self, pairs) -> str:
        h = hashlib.sha1()
        tok = self.tokenizer
        h.update(f"{type(tok).__name__}|{getattr(tok, 'name_or_path', '')}|{len(tok)}".encode())
        h.update(json.dumps(self.options.__dict__, sort_keys=True).encode())
        h.update(json.dumps(pairs, ensure_ascii=False).encode())
        return h.hexdigest()[:20]


@dataclass
class _Encoded:
    """Ragged per-item token ids and types."""

    ids: list[list[int]]
    types: list[list[int]]

    def row(self, i: int) -> tuple[list[int], list[int]]:
        return self.ids[i], self.types[i]

    def padded(self, pad_id: int) -> ItemTokens:
        n = len(self.ids)
        width = max([len(r) for r in self.ids] + [1])
        ids = np.full((n, width), pad_id, dtype=np.int64)
        types = np.full((n, width), TYPE_PAD, dtype=np.int64)
        lens = np.array([len(r) for r in self.ids], dtype=np.int64)
        for i, (r, t) in enumerate(zip(self.ids, self.types)):
            ids[i, :len(r)] = r
            types[i, :len(t)] = t
        return ItemTokens(torch.from_numpy(ids), torch.from_numpy(types), torch.from_numpy(lens))


def encode_sequence(items: Sequence[tuple[list[int], list[int]]], bos_id: int, max_items: int, max_token_num: int
                    ) -> dict[str, list[int]]:
    """The reference layout of one sequence from its items' (ids, types), oldest first (the official ``encode``).

    Returns ``input_ids``, ``token_type_ids``, ``item_position_ids`` and ``global_attention_mask`` lists.
    """
    items = list(items)[::-1][:max_items]
    ids, types, pos = [bos_id], [TYPE_BOS], [0]
    for n, (i, t) in enumerate(items):
        ids += list(i)
        types += list(t)
        pos += [n + 1] * len(i)
    ids, types, pos = ids[:max_token_num], types[:max_token_num], pos[:max_token_num]
    return {"input_ids": ids, "token_type_ids": types, "item_position_ids": pos,
            "global_attention_mask": [1] + [0] * (len(ids) - 1)}


def sequence_inputs(tokens: ItemTokens, history: Tensor, bos_id: int, pad_id: int, max_items: int,
                    max_token_num: int) -> dict[str, Tensor]:
    """Model inputs of a batch of histories, assembled from the tokenised catalogue without a per-item loop.

    Args:
        tokens: the catalogue's :class:`ItemTokens` (on the history's device).
        history: item rows, most recent LAST, left-padded with -1 (the framework's ``batch.history``).
        bos_id, pad_id: ids of ``<s>`` and padding.
        max_items: keep the most recent ``max_items`` items.
        max_token_num: total tokens per sequence, ``<s>`` included.

    Returns:
        ``input_ids``, ``token_type_ids``, ``item_position_ids``, ``attention_mask`` (1 real, 0 padding) and
        ``global_attention_mask`` (1 on ``<s>`` only), each [B, T] int64 with T = the longest row.

    Shapes:
        history: [B, L] -> each output [B, T], T ≤ max_token_num
    """
    dev = history.device
    h = history.flip(1)[:, :max_items]  # most recent first; padding (-1) moves to the end
    B, L = h.shape
    real = h >= 0
    rows = h.clamp(min=0)
    lens = torch.where(real, tokens.lens[rows], torch.zeros((), dtype=torch.long, device=dev))
    starts = 1 + torch.cumsum(lens, dim=1) - lens  # where each item's first token goes (after <s>)
    total = (1 + lens.sum(dim=1)).clamp(max=max_token_num)
    T = int(total.max()) if B else 1
    A = tokens.ids.shape[1]
    j = torch.arange(A, device=dev)
    at = starts[:, :, None] + j  # [B, L, A] target positions
    keep = (j < lens[:, :, None]) & (at < T)
    b = torch.arange(B, device=dev)[:, None, None].expand(B, L, A)[keep]
    at = at[keep]
    ids = torch.full((B, T), pad_id, dtype=torch.long, device=dev)
    types = torch.full((B, T), TYPE_PAD, dtype=torch.long, device=dev)
    pos = torch.zeros((B, T), dtype=torch.long, device=dev)
    ids[:, 0], types[:, 0] = bos_id, TYPE_BOS
    ids[b, at] = tokens.ids[rows][keep]
    types[b, at] = tokens.types[rows][keep]
    pos[b, at] = (torch.arange(L, device=dev) + 1)[None, :, None].expand(B, L, A)[keep]
    mask = (torch.arange(T, device=dev)[None, :] < total[:, None]).long()
    glob = torch.zeros_like(mask)
    glob[:, 0] = 1
    return {"input_ids": ids, "token_type_ids": types, "item_position_ids": pos, "attention_mask": mask,
            "global_attention_mask": glob}


def item_inputs(tokens: ItemTokens, items: Tensor, bos_id: int, pad_id: int, max_token_num: int
                ) -> dict[str, Tensor]:
    """Model inputs of single items (``<s>`` + the item, item position 1): how Recformer embeds an item.

    Shapes:
        items: [N] -> each output [N, T]
    """
    return sequence_inputs(tokens, items.reshape(-1, 1), bos_id, pad_id, 1, max_token_num)
