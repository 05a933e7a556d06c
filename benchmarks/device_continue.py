"""Continue a training run on a lent GPU (the `device` tool: one H200, 15 minutes in all) and bring it back.

Here, from the repository root, once a run has a state or snapshot (it may keep training meanwhile):

    python benchmarks/device_continue.py prepare runs/v04 --config configs/v04/continue-cpu.yaml --out .devcarry

There (the `device` tool's run, carrying `.devcarry`; nothing has to be installed there):

    command: python3 benchmarks/device_continue.py train --pack .devcarry --minutes 7
    carry:   [".devcarry"]

Back here, with the folder the tool returned (files_at):

    python benchmarks/device_continue.py collect /work/.device/<...> --out runs/v04-gpu/model

`prepare` packs the run's newest EMA weights, its photos, tags and estimator within what may travel; `train`
trains a fresh optimizer from them for --minutes and writes the EMA weights back in pieces of <= 15 MiB;
`collect` makes a model folder of them. What each packs, keeps and records: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's code, installed or not (the device machine: not)

import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from linearsr.datasets.photos import list_images, split_holdout  # noqa: E402
from linearsr.model.checkpoint import read_weights  # noqa: E402
from linearsr.model.network import LinearSRModel, ModelConfig  # noqa: E402
from linearsr.train.config import TrainConfig  # noqa: E402
from linearsr.train.run_dir import RunDir  # noqa: E402
from linearsr.train.state import StateError, check_resume_config, check_state  # noqa: E402

MIB = 1 << 20
TRAVEL_LIMIT = 64 * MIB  # the working tree and the carried folder together
TRAVEL_MARGIN = 1 * MIB  # files the lead adds between prepare and run
PIECE_LIMIT = 15 * MIB  # one file back from $OUT may hold 16 MiB
LOG_LIMIT = 4 * MIB  # the log and metrics.jsonl, cut to their ends beyond this
GRACE_MINUTES = 1.0  # after --minutes, before the training is stopped (startup and the final save fit in it)
RETURN_FILES, RETURN_TOTAL = 8, 62 * MIB  # at most 8 files and 64 MiB come back
PHOTO_SETTINGS = [(1536, 95), (1536, 92), (1536, 90), (1280, 92), (1280, 90), (1024, 90)]  # best first
# One H200 and 16 cores: 4x the CPU batch on 256 px crops (one batch of 32 costs a core 0.27 s to make, so 14
# workers feed about 50 steps/s), bf16 autocast, and the full state (three times the weights) saved less often.
GPU_OVERRIDES = ["optim.batch_size=32", "data.crop_size=256", "data.workers=14", "precision=auto",
                 "checkpoint.every=1000"]


class Refused(Exception):
    """What the user gets as one line (exit status 2)."""


def trained_keys(name: str, config: ModelConfig) -> bool:
    """What training changes: the experts, and a trainable base; the estimator is frozen, a frozen base ships."""
    return name.startswith("experts.") or (config.base_trainable and name.startswith("base."))


def newest_weights(run: RunDir, config: ModelConfig) -> tuple[int, str, dict] | None:
    """(step, where, tensors) of the run's latest EMA weights: the saved state (checksums verified, so a state
    being replaced by the live run is skipped) or the newest snapshot, whichever is later; None when neither."""
    found = []
    for folder in (run.state, run.state_prev):
        try:
            meta, tensors = check_state(folder)
        except StateError:  # none, or one the live run is replacing: then the one before it
            continue
        found.append((meta["step"], f"{folder}/ema.safetensors", tensors["ema.safetensors"]))
        break
    if snaps := run.snapshot_steps():
        found.append((max(snaps), str(snaps[max(snaps)]), None))
    if not found:
        return None
    step, where, tensors = max(found, key=lambda f: f[0])
    tensors = read_weights(Path(where)) if tensors is None else tensors
    return step, where, {k: v for k, v in tensors.items() if trained_keys(k, config)}


def start_weights(run_dir: Path, cfg: TrainConfig) -> tuple[int, str, dict]:
    """The weights to continue from: the run's newest, else the run's own start (init_from, init_partial)."""
    config = cfg.model_config()
    if (newest := newest_weights(RunDir(run_dir), config)) is not None:
        return newest
    from linearsr.train.model_init import build_model

    model = build_model(cfg)
    return 0, f"start of the run (init_from {cfg.init_from})", {
        k: v for k, v in model.state_dict().items() if trained_keys(k, config)}


def travelling_bytes(folder: Path) -> int | None:
    """Bytes of the git work tree holding `folder` that the device tool sends (tracked and untracked files
    not ignored); None outside a git work tree."""
    try:
        top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        names = subprocess.run(["git", "-C", top, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                               capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum(p.stat().st_size for n in names if n and (p := Path(top) / os.fsdecode(n)).is_file())


def photo_split(cfg: TrainConfig) -> dict[str, list[tuple[Path, str]]]:
    """{"train"|"val": [(file, name in the pack)]}: the run's own split (`build_data`'s), kept exactly by
    packing the held-out photos as a separate validation folder. Names end in .jpg (re-encoded)."""
    root = Path(cfg.data.train_dir)
    if cfg.data.val_dir:
        val_root = Path(cfg.data.val_dir)
        train, val = list_images(root), list_images(val_root)
    else:
        val_root = root
        train, val = split_holdout(list_images(root), cfg.data.val_holdout, root)
    return {"train": [(f, str(f.relative_to(root).with_suffix(".jpg"))) for f in train],
            "val": [(f, str(f.relative_to(val_root).with_suffix(".jpg"))) for f in val]}


def encode_photos(split: dict, budget: int) -> tuple[dict[str, bytes], tuple[int, int]]:
    """{pack path: JPEG bytes} at the best PHOTO_SETTINGS that fit in `budget` bytes; Refused if none does."""
    from tqdm import tqdm

    decoded = {}
    for part, file, name in tqdm([(part, *item) for part, items in split.items() for item in items], "photos"):
        with Image.open(file) as im:
            decoded[f"photos/{part}/{name}"] = ImageOps.exif_transpose(im).convert("RGB")
    for side, quality in PHOTO_SETTINGS:
        encoded = {}
        for name, im in decoded.items():
            im = im.copy()
            im.thumbnail((side, side), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=quality)
            encoded[name] = buf.getvalue()
        total = sum(map(len, encoded.values()))
        if total <= budget:
            return encoded, (side, quality)
    raise Refused(f"the photos need {total / MIB:.1f} MiB even at long side {side}, quality {quality}; "
                  f"{budget / MIB:.1f} MiB are left for them")


def pack_tags(cfg: TrainConfig, split: dict, dest: Path) -> dict:
    """The tag table under the packed names and its embedding cache (`linearsr data tag-cache`'s file)."""
    from linearsr.tags import TagTable, load_tag_encoder

    if not cfg.data.tags_file or cfg.data.tag_mode == "none":
        return {}
    table = TagTable.from_file(cfg.data.tags_file)
    renamed = {"tags": {}, "captions": {}}
    for part, items in split.items():
        root = Path(cfg.data.val_dir if part == "val" and cfg.data.val_dir else cfg.data.train_dir)
        for file, name in items:
            for kind, value in (("tags", table.tags_for(file.relative_to(root))),
                                ("captions", table.caption_for(file.relative_to(root)))):
                renamed[kind].update({f"{part}/{name}": value} if value is not None else {})
    (dest / "tags.json").write_text(json.dumps(renamed, indent=1))
    encoder = load_tag_encoder(cfg.data.tag_encoder)
    if encoder is None:
        raise Refused(f"the tag encoder {cfg.data.tag_encoder!r} is not installed here: pip install 'linearsr[tags]'")
    encoder.warm(TagTable.from_file(dest / "tags.json").all_tags())
    encoder.warm(c for c in renamed["captions"].values() if c)
    encoder.save_cache(dest / "tag_cache.safetensors")
    return {"tags_file": "tags.json", "tag_encoder": "tag_cache.safetensors"}


def prepare(run_dir: Path, config: Path, out: Path, estimator: Path | None, budget_mib: float | None) -> dict:
    cfg = TrainConfig.load(config)
    if RunDir(run_dir).config.is_file():
        check_resume_config(run_dir, cfg)  # one line when the config is not the run's model
        estimator = estimator or Path(TrainConfig.load(RunDir(run_dir).config).estimator_from or "")
    estimator = estimator or Path(cfg.estimator_from or "")
    if not estimator.is_file():
        raise Refused(f"no degradation estimator file {str(estimator)!r}: pass --estimator FILE")
    if out.exists() and any(out.iterdir()):
        raise Refused(f"{out}: exists and is not empty; remove it or choose another --out")  # never overwritten
    repo = travelling_bytes(out.resolve().parent) or travelling_bytes(Path.cwd())  # what the tool sends
    budget = int(budget_mib * MIB) if budget_mib else TRAVEL_LIMIT - TRAVEL_MARGIN - (repo or 4 * MIB)
    step, where, tensors = start_weights(run_dir, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
    try:
        info = write_pack(tmp, cfg, config, tensors, estimator, budget)
        info.update(source_run=str(run_dir.resolve()), source_step=step, source_weights=where,
                    repo_bytes=repo, budget_bytes=budget)
        (tmp / "pack.json").write_text(json.dumps(info, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def write_pack(dest: Path, cfg: TrainConfig, config: Path, tensors: dict, estimator: Path, budget: int) -> dict:
    """Everything but the photos first, then the photos in what is left of the budget."""
    (dest / "config.yaml").write_text(cfg.to_yaml())
    (start := dest / "start").mkdir()
    cfg.model_config().save(start / "config.json")
    save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, str(start / "model.safetensors"),
              metadata={"format": "linearsr"})
    shutil.copyfile(estimator, dest / "estimator.safetensors")
    split = photo_split(cfg)
    tags = pack_tags(cfg, split, dest)
    fixed = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) + 4096  # + pack.json
    if fixed >= budget:
        raise Refused(f"weights, estimator and tags take {fixed / MIB:.1f} MiB of the {budget / MIB:.1f} MiB to travel")
    photos, (side, quality) = encode_photos(split, budget - fixed)
    for name, data in photos.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
    sizes = {"start_weights": (start / "model.safetensors").stat().st_size, "photos": sum(map(len, photos.values())),
             "total": sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) + 4096}
    return {"config": str(config), "estimator_file": str(estimator.resolve()),
            "estimator_sha256": hashlib.sha256(estimator.read_bytes()).hexdigest(),
            "photos": {part: len(items) for part, items in split.items()}, "photo_max_side": side,
            "photo_quality": quality, **tags, "bytes": sizes}


def device_overrides(pack: Path, info: dict, minutes: float) -> list[str]:
    """The packed config's overrides that point it at the packed inputs, and the time budget."""
    p = pack.resolve()
    paths = [f"init_from={p / 'start'}", "init_from_any=true", "init_partial=false",
             f"estimator_from={p / 'estimator.safetensors'}", f"data.train_dir={p / 'photos' / 'train'}",
             f"data.val_dir={p / 'photos' / 'val'}", f"max_minutes={minutes}"]
    if info.get("tags_file"):
        paths += [f"data.tags_file={p / info['tags_file']}", f"data.tag_encoder={p / info['tag_encoder']}"]
    return paths


def shard(tensors: dict, limit: int | None = None) -> list[dict]:
    """Tensors in name order, cut into groups of at most `limit` bytes (default PIECE_LIMIT; a file's header
    adds a few kB)."""
    limit = limit or PIECE_LIMIT
    pieces, current, size = [], {}, 0
    for name in sorted(tensors):
        n = tensors[name].nbytes
        if n > limit:
            raise Refused(f"tensor {name} alone is {n / MIB:.1f} MiB, over the {limit / MIB:.0f} MiB of one file")
        if current and size + n > limit:
            pieces.append(current)
            current, size = {}, 0
        current[name], size = tensors[name], size + n
    return pieces + ([current] if current else [])


def return_dtype(tensors: dict) -> torch.dtype:
    """fp32 (the exact EMA) when its pieces and the 3 other files fit what comes back, else fp16."""
    for dtype in (torch.float32, torch.float16):
        cast = {k: v.to(dtype) for k, v in tensors.items()}
        if len(shard(cast)) + 3 <= RETURN_FILES and sum(v.nbytes for v in cast.values()) <= RETURN_TOTAL:
            return dtype
    raise Refused("the weights do not fit in 8 files of 15 MiB even in fp16")


def run_training(cmd: list[str], env: dict, log: Path, deadline_s: float) -> int:
    """The child training, its output in `log`; at the deadline SIGTERM (it saves and stops), then a kill."""
    with open(log, "w") as fh:
        child = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        for stop in (None, child.terminate, child.kill):  # SIGTERM: the run saves and stops at its next step
            if stop is not None:
                stop()
            try:
                return child.wait(timeout=deadline_s if stop is None else 60)
            except subprocess.TimeoutExpired:
                continue


def train(pack: Path, out: Path, minutes: float, device: str, extra: list[str]) -> dict:
    info = json.loads((pack / "pack.json").read_text())
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise Refused("--device cuda: no CUDA device here")
    dtype = return_dtype(load_file(str(pack / "start" / "model.safetensors")))
    run_dir = Path(tempfile.mkdtemp(prefix="linearsr-device-run-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", **({} if cuda else {"CUDA_VISIBLE_DEVICES": ""})}
    # the command line's overrides last, so they win over GPU_OVERRIDES
    settings = (GPU_OVERRIDES if cuda else []) + list(extra)
    overrides = device_overrides(pack, info, minutes) + settings
    cmd = [sys.executable, "-m", "linearsr.cli", "train", str(pack / "config.yaml"), *overrides,
           "--out", str(run_dir), "--quiet"]
    started = time.time()
    code = run_training(cmd, env, out / "train.log", 60 * (minutes + GRACE_MINUTES))
    print("".join((out / "train.log").read_text(errors="replace").splitlines(True)[-15:]), end="")  # the tool shows it
    name = torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)"
    return export_pieces(RunDir(run_dir), out, dtype, {
        "pack": info, "overrides": overrides, "settings": settings, "device": name, "exit_code": code,
        "minutes_asked": minutes, "wall_minutes": round((time.time() - started) / 60, 2)})


def export_pieces(run: RunDir, out: Path, dtype: torch.dtype, record: dict) -> dict:
    """The run's newest EMA weights in pieces, with run.json and metrics.jsonl, into `out`."""
    cfg = TrainConfig.load(run.config)
    if (newest := newest_weights(run, cfg.model_config())) is None:
        raise Refused(f"{run}: the training saved no weights; see {out / 'train.log'}")
    step, where, tensors = newest
    pieces = shard({k: v.to(dtype) for k, v in tensors.items()})
    for i, piece in enumerate(pieces, 1):
        name = f"weights-{i:02d}-of-{len(pieces):02d}.safetensors"
        save_file({k: v.contiguous() for k, v in piece.items()}, str(out / name))
    if run.metrics.is_file():
        shutil.copyfile(run.metrics, out / "metrics.jsonl")
    record.update(step=step, weights_from=where, samples=step * cfg.optim.batch_size, dtype=str(dtype).split(".")[-1],
                  pieces=len(pieces), model_config=cfg.model_config().to_dict())
    (out / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    for path in (out / "train.log", out / "metrics.jsonl"):  # keep their ends within one file's limit
        if path.is_file() and path.stat().st_size > LOG_LIMIT:
            path.write_bytes(path.read_bytes()[-LOG_LIMIT:])
    return record


def collect(files: Path, out: Path, estimator: Path | None, dtype: str, overwrite: bool) -> Path:
    from linearsr.train.model_init import load_estimator

    record = json.loads((files / "run.json").read_text())  # a missing or damaged file: one line from main
    pieces = sorted(files.glob("weights-*.safetensors"))
    if len(pieces) != record["pieces"]:
        raise Refused(f"{files}: {len(pieces)} weight pieces, run.json names {record['pieces']}")
    tensors = {k: v for p in pieces for k, v in load_file(str(p)).items()}
    config = ModelConfig.from_dict(record["model_config"])
    model = LinearSRModel(config)
    expected = {k for k in model.state_dict() if trained_keys(k, config)}
    if set(tensors) != expected:
        raise Refused(f"{files}: the pieces hold {len(tensors)} tensors, the model trains {len(expected)}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    if model.estimator is not None:
        load_estimator(model, estimator := estimator or Path(record["pack"]["estimator_file"]))
    pack = record["pack"]
    model.config.provenance = {
        **{k: v for k, v in config.provenance.items() if k != "init_from"},
        "continued_from": f"{pack['source_run']} step {pack['source_step']}", "device": record["device"],
        "device_minutes": record["wall_minutes"], "device_steps": record["step"],
        "device_samples": record["samples"], "device_settings": record["settings"],
        "estimator": str(estimator) if model.estimator is not None else None, "collected_from": str(files)}
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    model.save_pretrained(out, dtype=torch_dtype, overwrite=overwrite)
    if (files / "metrics.jsonl").is_file():
        shutil.copyfile(files / "metrics.jsonl", out / "device_metrics.jsonl")
    LinearSRModel.from_pretrained(out)  # the proof that the folder loads
    return out


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="pack a run for the device (here)")
    p.add_argument("run_dir", type=Path), p.add_argument("--config", type=Path, required=True, help="the run's config")
    p.add_argument("--out", type=Path, default=Path(".devcarry"), help="the git-ignored folder to carry")
    p.add_argument("--estimator", type=Path, help="default: the run's estimator_from")
    p.add_argument("--budget-mib", type=float, help="default: 64 MiB minus what the repository sends, minus 1")
    t = sub.add_parser("train", help="train on the device, write the files to bring back to --out (there)")
    t.add_argument("--pack", type=Path, default=Path(".devcarry"))
    t.add_argument("--minutes", type=float, required=True, help="training time (max_minutes)")
    t.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="default: $OUT")
    t.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    t.add_argument("overrides", nargs="*", help="more key=value overrides of the config")
    c = sub.add_parser("collect", help="join the returned files into a model folder (here)")
    c.add_argument("files", type=Path), c.add_argument("--out", type=Path, required=True)
    c.add_argument("--estimator", type=Path, help="default: the file that was packed")
    c.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    c.add_argument("--overwrite", action="store_true")
    return top


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        if a.command == "prepare":
            i = prepare(a.run_dir, a.config, a.out, a.estimator, a.budget_mib)
            print(f"{a.out}: step {i['source_step']} of {a.run_dir}; {i['bytes']['total'] / MIB:.2f} of "
                  f"{i['budget_bytes'] / MIB:.2f} MiB (photos at {i['photo_max_side']} px, q{i['photo_quality']})")
        elif a.command == "train":
            if a.out is None:
                raise Refused("--out is needed where $OUT is not set")
            r = train(a.pack, Path(a.out), a.minutes, a.device, a.overrides)
            print(f"{a.out}: step {r['step']} ({r['samples']} samples) in {r['wall_minutes']} min on {r['device']}, "
                  f"{r['pieces']} pieces ({r['dtype']}), training exit code {r['exit_code']}")
        else:
            print(f"wrote {collect(a.files, a.out, a.estimator, a.dtype, a.overwrite)}")
    except (Refused, ValueError, OSError) as e:
        print(f"device_continue: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
