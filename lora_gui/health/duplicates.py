"""Near-duplicate images: the same photo resized, recompressed or slightly cropped.

Two signals: the perceptual hashes (``imagehash.phash``, 64 bits) and the backbone's embeddings
(cosine similarity). A pair counts when its hashes are within ``PHASH_BITS`` bits and its cosine is
at least ``MIN_COSINE``, or within ``MID_PHASH_BITS`` bits at ``MID_COSINE``, or when its cosine alone
is ``SURE_COSINE``. Measured on 1,000 Fashion-MNIST images (28 px, which look alike far more than
photos do): every copy resized x1.7-x3 and re-saved as JPEG (quality 70) stayed within 4 bits and
cosine 0.85, while 6 of the 500,000 distinct pairs passed.

A crop moves every pixel, so its hash is far from the original's (8-32 bits for 5-15 % crops of
scikit-image's real photos: as far as distinct photos, 14+). Its embedding stays close (cosine
0.82-0.98), but similar distinct images can be as close (two sneakers on white, 0.9+). So the last
rule asks how much closer the pair is than its images' usual neighbours, as CSLS does for retrieval
(Conneau et al., 2018): cosine >= ``CROP_COSINE`` and at least ``LOCAL_MARGIN`` above the ``LOCAL_K``-th
nearest neighbour's cosine of either image. Measured: crops of real photos 0.47-0.9 above (distinct
photos at most 0.09); on the 1,000 Fashion-MNIST images, the 5 pairs 0.25 above are all injected copies.

Each pair is then named by where its two images sit: across train and validation it is a *leak*
(validation accuracy is inflated), with two labels a *label conflict*, otherwise a plain *duplicate*.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..data import load_rgb

PHASH_BITS, MIN_COSINE = 4, 0.82
MID_PHASH_BITS, MID_COSINE = 8, 0.93
SURE_COSINE = 0.97
LOCAL_K, LOCAL_MARGIN, CROP_COSINE = 10, 0.25, 0.8
CHUNK = 1024


@dataclass
class ImageSignature:
    phash: np.ndarray        # 64 booleans
    pixel_std: float         # spread of grey levels; ~0 for a blank image


def _signature(path: str) -> ImageSignature:
    import imagehash
    im = load_rgb(path, max_side=512)
    grey = np.asarray(im.convert("L"), dtype=np.float32)
    return ImageSignature(imagehash.phash(im).hash.flatten(), float(grey.std()))


def signatures(paths: list[str]) -> list[ImageSignature]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(_signature, paths))


@dataclass
class DuplicatePair:
    first: int
    second: int
    kind: str                # "leak" | "label conflict" | "duplicate"
    phash_bits: int
    cosine: float


def _kind(i: int, j: int, labels: np.ndarray, parts: list[str]) -> str:
    if parts[i] != parts[j]:
        return "leak"
    return "label conflict" if labels[i] != labels[j] else "duplicate"


def _kth_neighbour_cosine(unit: np.ndarray, k: int) -> np.ndarray:
    """Per image, the cosine of its k-th nearest other image (how close its usual neighbours are)."""
    out = np.empty(len(unit), np.float32)
    for start in range(0, len(unit), CHUNK):
        block = unit[start:start + CHUNK] @ unit.T
        block[np.arange(len(block)), start + np.arange(len(block))] = -np.inf   # not itself
        out[start:start + CHUNK] = -np.partition(-block, k - 1, axis=1)[:, k - 1]
    return out


def near_duplicates(sigs: list[ImageSignature], features: np.ndarray, labels: np.ndarray,
                    parts: list[str]) -> list[DuplicatePair]:
    """Every near-identical pair (i < j), closest first. ``parts``: "train"/"val" per image."""
    n = len(sigs)
    if n < 2:
        return []
    bits = np.stack([s.phash for s in sigs]).astype(np.float32)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    usual = _kth_neighbour_cosine(unit, min(LOCAL_K, n - 1))
    pairs = []
    for start in range(0, n, CHUNK):  # blocks of rows keep memory at CHUNK x n
        block = slice(start, min(n, start + CHUNK))
        # Hamming distance of 0/1 vectors: a(1-b) + (1-a)b, as two matrix products
        hamming = bits[block] @ (1 - bits).T + (1 - bits[block]) @ bits.T
        cosine = unit[block] @ unit.T
        close = ((hamming <= PHASH_BITS) & (cosine >= MIN_COSINE)) \
            | ((hamming <= MID_PHASH_BITS) & (cosine >= MID_COSINE)) | (cosine >= SURE_COSINE) \
            | ((cosine >= CROP_COSINE)   # crops: far closer than either image's usual neighbours
               & (cosine - np.maximum(usual[block, None], usual[None, :]) >= LOCAL_MARGIN))
        for a, j in zip(*np.nonzero(close)):
            i = start + int(a)
            if i < j:
                pairs.append(DuplicatePair(i, int(j), _kind(i, int(j), labels, parts),
                                           int(round(hamming[a, j])), float(cosine[a, j])))
    pairs.sort(key=lambda p: (-p.cosine, p.phash_bits))
    return pairs
