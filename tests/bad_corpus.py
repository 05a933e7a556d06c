"""The bad-files corpus: built at test time (no committed binaries) by `build(folder)`, run through the CLI
(tests/test_hardening_cli.py) and the web API (tests/test_hardening_web.py).

Each entry: file name -> a phrase its one-line error must contain. `build` also writes two good images so a
run shows the batch going on past every bad one. Run by hand:  python tests/bad_corpus.py /tmp/corpus
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

GOOD = ("good_a.png", "good_b.jpg")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height pixels, with one tiny compressed row: a decompression
    bomb as far as the header says, which is all the pixel guard may read."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def build(folder: str | Path, *, links: bool = True) -> dict[str, str]:
    """Write the corpus into `folder`; returns {bad file name: phrase expected in its error line}.
    links=False leaves out the symbolic links (an upload cannot carry them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    picture = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(folder / GOOD[0])
    Image.fromarray(picture[::-1]).save(folder / GOOD[1], quality=90)
    png = (folder / GOOD[0]).read_bytes()

    expected = {}

    def bad(name: str, data: bytes, words: str) -> None:
        (folder / name).write_bytes(data)
        expected[name] = words

    bad("truncated.png", png[: len(png) // 2], "truncated")
    bad("empty.png", b"", "empty")
    bad("notes.png", b"this is a text file with an image name\n", "cannot identify image file")
    bad("random.jpg", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "cannot identify image file")
    bad("jpeg_head_only.jpg", (folder / GOOD[1]).read_bytes()[:200], "truncated")
    bad("bomb.png", _bomb_png(60_000, 60_000), "exceeds the")
    bad("bad_bmp.bmp", b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + struct.pack("<IiiHHI", 40, -5, 0, 1, 24, 0)
        + b"\x00" * 16, "")
    nan = np.full((8, 8), np.nan, dtype=np.float32)
    Image.fromarray(nan, mode="F").save(folder / "nan_float.tif")
    expected["nan_float.tif"] = "NaN"
    bad("zero.gif", b"GIF89a\x00\x00\x00\x00\x00\x00\x00;", "")
    if links:
        loop = folder / "loop.png"
        os.symlink(loop.name, loop)  # points at itself
        expected["loop.png"] = "symbolic link loop"
        os.symlink("missing.png", folder / "dangling.png")
        expected["dangling.png"] = "no such file"
    return expected


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "bad_corpus")
    for name, words in build(target).items():
        print(f"{target / name}: expect {words or 'a one-line error'}")
