"""benchmarks/device_continue.py on a tiny run, on the CPU: pack within a budget, train "there" (a CPU child
process), bring the EMA weights back in pieces within the transfer limits, and join them into a model folder."""

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from linearsr.datasets.photos import list_images, split_holdout
from linearsr.model.degradation_estimator import DegradationEstimator
from linearsr.model.network import LinearSRModel
from linearsr.tags import CachedTagEncoder, TagTable
from linearsr.train.config import TrainConfig
from linearsr.train.loop import train
from linearsr.train.run_dir import RunDir
from test_train import make_photos, write_config

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import device_continue as dc  # noqa: E402


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A tiny run conditioned on the degradation vector, with tags and a precomputed tag cache."""
    tmp = tmp_path_factory.mktemp("source")
    photos = make_photos(tmp / "photos", n=5, size=96)
    tags = {"tags": {f"photos/photo{i}.png": ["tag a", f"tag {i}"] for i in range(5)}}
    (tmp / "tags.json").write_text(json.dumps(tags))
    texts = TagTable.from_file(tmp / "tags.json").all_tags()
    CachedTagEncoder({t: torch.randn(384) for t in texts}, name="test").save_cache(tmp / "cache.safetensors")
    est = DegradationEstimator()
    save_file({k: v.contiguous() for k, v in est.state_dict().items()}, str(tmp / "est.safetensors"))
    cfg_path = write_config(tmp, **{
        "model.degradation_condition": True, "model.degradation_vector": "params", "experts.count": 2,
        "estimator_from": str(tmp / "est.safetensors"), "data.tags_file": str(tmp / "tags.json"),
        "data.tag_encoder": str(tmp / "cache.safetensors"), "data.train_dir": str(photos),
        "steps": 4, "validation.every": 4, "checkpoint.every": 2})
    train(TrainConfig.load(cfg_path), tmp / "run", progress=False)
    return tmp, cfg_path


def test_prepare_packs_the_newest_weights_the_split_and_tags_and_refuses_over_budget(source_run, tmp_path):
    tmp, cfg_path = source_run
    with pytest.raises(dc.Refused, match="MiB"):
        dc.prepare(tmp / "run", cfg_path, tmp_path / "small", None, budget_mib=0.01)
    assert not (tmp_path / "small").exists() and not list(tmp_path.glob(".small.tmp*"))  # nothing half-written
    info = dc.prepare(tmp / "run", cfg_path, tmp_path / "pack", None, None)
    pack = tmp_path / "pack"
    assert info["source_step"] == 4 and info["bytes"]["total"] <= info["budget_bytes"]
    assert (info["photo_max_side"], info["photo_quality"]) == (1536, 95)
    ema = load_file(str(tmp / "run" / "state" / "ema.safetensors"))
    start = load_file(str(pack / "start" / "model.safetensors"))
    assert set(start) == {k for k in ema if k.startswith("experts.")}
    assert all(start[k].dtype == torch.float16 and torch.equal(start[k], ema[k].half()) for k in start)
    # the run's own hold-out split, each photo re-encoded as a JPEG under its name
    root = Path(TrainConfig.load(cfg_path).data.train_dir)
    train_files, val_files = split_holdout(list_images(root), 1, root)
    for part, files in (("train", train_files), ("val", val_files)):
        packed = list_images(pack / "photos" / part)
        assert [p.stem for p in packed] == [f.stem for f in files]
        assert all(Image.open(p).format == "JPEG" for p in packed)
    table = TagTable.from_file(pack / "tags.json")
    assert table.tags_for(f"{val_files[0].stem}.jpg") == ["tag a", f"tag {val_files[0].stem[-1]}"]
    assert set(CachedTagEncoder.load(pack / "tag_cache.safetensors")._cache) == set(table.all_tags())
    with pytest.raises(dc.Refused, match="not empty"):
        dc.prepare(tmp / "run", cfg_path, pack, None, None)


def test_shard_respects_the_limit_and_keeps_every_tensor():
    tensors = {f"t{i}": torch.randn(100 + 37 * i) for i in range(10)}
    pieces = dc.shard(tensors, limit=2000)
    assert len(pieces) > 1 and all(sum(v.numel() * 4 for v in p.values()) <= 2000 for p in pieces)
    assert {k: v for p in pieces for k, v in p.items()} == tensors
    with pytest.raises(dc.Refused, match="alone"):
        dc.shard({"big": torch.zeros(1000)}, limit=2000)


def test_train_there_and_collect_here_round_trip(source_run, tmp_path, monkeypatch):
    tmp, cfg_path = source_run
    dc.prepare(tmp / "run", cfg_path, tmp_path / "pack", None, None)
    monkeypatch.setattr(dc, "PIECE_LIMIT", 40_000)  # a tiny model, split as a large one would be
    out = tmp_path / "OUT"
    assert dc.main(["train", "--pack", str(tmp_path / "pack"), "--minutes", "2", "--device", "cpu",
                    "--out", str(out), "steps=2"]) == 0
    files = sorted(out.iterdir())
    pieces = [f for f in files if f.name.startswith("weights-")]
    assert len(files) <= dc.RETURN_FILES and len(pieces) > 1
    assert all(f.stat().st_size <= 16 * 2**20 for f in files)
    record = json.loads((out / "run.json").read_text())
    assert record["step"] == 2 and record["device"].startswith("cpu") and record["dtype"] == "float32"
    # the device run started from the packed weights, fresh optimizer: its overrides name the pack
    assert f"init_from={(tmp_path / 'pack' / 'start').resolve()}" in record["overrides"]
    assert dc.main(["collect", str(out), "--out", str(tmp_path / "model")]) == 0
    model = LinearSRModel.from_pretrained(tmp_path / "model")
    device_ema = load_file(record["weights_from"])
    for k, v in model.state_dict().items():
        if k.startswith("experts."):
            assert torch.equal(v, device_ema[k]), k
    est = load_file(str(tmp / "est.safetensors"))
    assert all(torch.equal(model.estimator.state_dict()[k], v) for k, v in est.items())
    prov = model.config.provenance
    assert prov["device_steps"] == 2 and prov["continued_from"].endswith("step 4")
    assert dc.main(["collect", str(out), "--out", str(tmp_path / "model")]) == 2  # never overwritten silently
