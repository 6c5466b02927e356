#!/usr/bin/env python3
"""Rebuild assets/example/ from Debian's Fashion-MNIST (package dataset-fashion-mnist).

Takes the first N test-set images of four classes that look nothing alike
(so a first run reaches high accuracy in a minute or two on a CPU),
upscales them from 28x28 to 64x64 and writes assets/example/<class>/<n>.png.
Deterministic: the same input files give the same PNGs.

    python scripts/build_example_dataset.py [--source DIR] [--per-class 30] [--size 64]
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parent.parent / "assets" / "example"
# Fashion-MNIST label ids -> folder names. Chosen for silhouettes that
# differ at a glance: a top, legs, a low shoe and a box with a handle.
CLASSES = {0: "t-shirt", 1: "trouser", 7: "sneaker", 8: "bag"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian magic, dims, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise SystemExit(f"{path} is not a uint8 IDX file")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    images = read_idx(args.source / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(args.source / "t10k-labels-idx1-ubyte.gz")
    if args.out.exists():
        shutil.rmtree(args.out)
    for label, name in CLASSES.items():
        folder = args.out / name
        folder.mkdir(parents=True)
        for n, i in enumerate(np.flatnonzero(labels == label)[: args.per_class]):
            im = Image.fromarray(images[i], mode="L").resize((args.size, args.size), Image.Resampling.BICUBIC)
            im.convert("RGB").save(folder / f"{n:02d}.png", optimize=True)
    total = sum(p.stat().st_size for p in args.out.rglob("*.png"))
    print(f"wrote {len(CLASSES) * args.per_class} images ({total / 1024:.0f} KiB) to {args.out}")


if __name__ == "__main__":
    main()
