"""A real image folder for the benchmark, cut once from Debian's Fashion-MNIST.

Layout ``<root>/train/<class>/NNNNN.png`` + ``<root>/val/<class>/NNNNN.png``:
training images come from Fashion-MNIST's training file, validation images
from its separate test file (a real held-out split). Every variant reads the
same folder, so they all see the identical split. Byte-identical images are
skipped while writing, because the engine's dataset scan drops duplicates and
the reference's ImageFolder would not: both must see the same files.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def find_source() -> Path:
    """Where Debian's dataset-fashion-mnist package put the IDX files."""
    if (DEFAULT_DIR / FILES["train"][0]).is_file():
        return DEFAULT_DIR
    try:
        listed = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True,
                                text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = []
    for path in listed:
        if path.endswith(FILES["train"][0]):
            return Path(path).parent
    raise SystemExit("Fashion-MNIST not found: install Debian's package (apt-get install "
                     "dataset-fashion-mnist) or put its four .gz IDX files in " + str(DEFAULT_DIR))


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def build_folder(cache_root: Path, train_per_class: int, val_per_class: int) -> Path:
    """The folder for these counts, written once (atomically) and reused afterwards."""
    root = Path(cache_root) / f"fashion-mnist-{train_per_class}x{val_per_class}"
    if (root / ".complete").is_file():
        return root
    source = find_source()
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    seen: set[str] = set()  # across both splits: a val image must not repeat a train image
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        images = read_idx(source / FILES[split][0])
        labels = read_idx(source / FILES[split][1])
        for label, name in enumerate(CLASSES):
            (tmp / split / name).mkdir(parents=True)
            written = 0
            for index in np.flatnonzero(labels == label):  # file order: deterministic
                png = _png(images[index])
                digest = hashlib.sha1(png).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                (tmp / split / name / f"{int(index):05d}.png").write_bytes(png)
                written += 1
                if written == per_class:
                    break
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def list_split(root: Path, split: str) -> list[tuple[str, int]]:
    """(path, label) pairs with labels by sorted class name, as ImageFolder and the engine do."""
    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    return [(str(f), i) for i, c in enumerate(classes) for f in sorted((root / split / c).iterdir())]
