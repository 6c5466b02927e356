"""Decoding user images safely, the same way for validation, training and prediction.

Everything that turns a file into pixels goes through ``probe_image`` (is it
a usable image, and if not, why) or ``load_rgb`` (the pixels, upright, RGB),
so an image that passed validation decodes identically in every epoch and at
inference time. No UI code here.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import re
import stat
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset as TorchDataset

from ..errors import DataError

# Refuse (not warn, as Pillow does) above this many pixels: a 40 MP image is
# already beyond any camera a user trains from, while a few hundred bytes of
# PNG can claim gigapixels and exhaust memory when decoded.
MAX_IMAGE_PIXELS = 40_000_000
MIN_IMAGE_SIDE = 8
# Validation reads each file whole (to hash it); bigger files aren't photos.
MAX_FILE_BYTES = 256 * 1024**2
# Pillow's own guard, for every Image.open in the process (also the ones a web framework does
# for an upload): it warns above this many pixels and raises DecompressionBombError above twice
# as many. Our own decoders turn the warning into a refusal locally (``_no_bombs``), so nothing
# has to silence Pillow's warning globally.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

_FILE_TYPES = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))


def file_type(mode: int) -> str:
    """What a non-regular file is, in words ('FIFO', 'character device', ...)."""
    return next((name for test, name in _FILE_TYPES if test(mode)), "special file")


def read_regular(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, else DataError saying why.

    Opened non-blocking and checked on the open descriptor, so a FIFO (which would block
    the read forever) or a device such as /dev/zero (which never ends) is refused at once,
    even if a regular file was swapped for one after a scan looked at it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (was it moved or deleted?)") from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file ({file_type(st.st_mode)})")
        if st.st_size > limit:
            raise DataError(f"{path}: file too large ({st.st_size // 1024**2} MB; the limit is "
                            f"{limit // 1024**2} MB)")
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while being read
                raise DataError(f"{path}: file too large (more than {limit // 1024**2} MB)")
        return b"".join(chunks)
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def checked_image(image):
    """``image`` (a PIL image or an array) if its size is one we decode, else DataError.

    The one size rule for every image that enters without a file (an upload decoded by
    the web framework, a webcam frame, an array from Python): above MAX_IMAGE_PIXELS it is
    refused before any copy or conversion of its pixels is made."""
    if isinstance(image, Image.Image):
        w, h = image.size
    else:
        shape = getattr(image, "shape", None)
        if shape is None or len(shape) < 2:
            raise DataError(f"expected an image (PIL image or HxW[xC] array), got {type(image).__name__}")
        h, w = int(shape[0]), int(shape[1])
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(f"image of {w}x{h} pixels ({w * h / 1e6:.0f} MP) refused: the limit is "
                        f"{MAX_IMAGE_PIXELS // 10**6} MP; scale it down and try again")
    return image

# Image.open only tries these plugins. Restricting it keeps hostile files away
# from rarely used decoders (EPS would even start Ghostscript). The JPEG
# plugin also opens multi-picture phone JPEGs, reported as format "MPO".
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
EXTENSION_FOR_FORMAT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp",
                        "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}
# Real images in formats we don't decode deserve a better reason than "not an image".
_KNOWN_UNSUPPORTED = {".heic", ".heif", ".avif", ".jxl", ".jp2", ".psd", ".svg", ".ico",
                      ".ppm", ".pgm", ".pbm", ".dng", ".cr2", ".nef", ".arw", ".raw"}


@dataclass
class ProbeResult:
    """Outcome of checking one file: ``reason`` is empty when it is usable."""

    reason: str = ""
    sha1: str = ""
    size: tuple[int, int] = (0, 0)
    format: str = ""


def _open(source) -> Image.Image:
    with warnings.catch_warnings():  # here, and only here, Pillow's bomb warning is a refusal
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(source, formats=PIL_FORMATS)
        except Image.DecompressionBombWarning as exc:
            raise Image.DecompressionBombError(str(exc)) from None


def _size_problem(im: Image.Image) -> str:
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        return f"decompression bomb ({w * h} pixels)"
    if min(w, h) < MIN_IMAGE_SIDE:
        return f"image too small ({w}x{h})"
    return ""


def probe_image(path: str | os.PathLike) -> ProbeResult:
    """Check that ``path`` is a whole, decodable image of a sane size.

    Reads the file once (hashing it for duplicate detection) and decodes it
    fully, because truncated JPEGs only fail once pixel data is read. JPEGs
    are decoded at reduced scale (draft mode), which still walks all the data
    but costs a fraction of a full decode.
    """
    try:
        data = read_regular(path)
    except DataError as exc:
        return ProbeResult(reason=str(exc).removeprefix(f"{path}: "))
    digest = hashlib.sha1(data).hexdigest()
    try:
        im = _open(io.BytesIO(data))
    except UnidentifiedImageError:
        ext = Path(path).suffix.lower()
        if ext in _KNOWN_UNSUPPORTED:
            return ProbeResult(reason=f"unsupported image format ({ext}); convert it to jpg or png", sha1=digest)
        return ProbeResult(reason="not an image", sha1=digest)
    except Image.DecompressionBombError as exc:  # Pillow's own, far above our limit
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        return ProbeResult(reason=f"decompression bomb ({pixels[1] if pixels else 'too many'} pixels)",
                           sha1=digest)
    except Exception:  # Pillow raises many types for broken headers
        return ProbeResult(reason="corrupt or truncated image", sha1=digest)
    result = ProbeResult(sha1=digest, size=im.size, format=im.format or "")
    result.reason = _size_problem(im)
    if result.reason:
        return result
    try:
        im.verify()  # chunk CRCs etc.; leaves the image unusable, so reopen
        im = _open(io.BytesIO(data))
        if im.format in ("JPEG", "MPO"):
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()
    except Exception:
        result.reason = "corrupt or truncated image"
    return result


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit scans: convert("L") would clip everything above 255 to white.
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # The colour under fully transparent pixels is arbitrary (often black);
        # a white backdrop is what people see when they view the image.
        rgba = im.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")
    return im.convert("RGB")


def shrink(im: Image.Image, max_side: int | None) -> Image.Image:
    """Resize so the shorter side is at most ``max_side`` (never enlarge)."""
    if not max_side or min(im.size) <= max_side:
        return im
    scale = max_side / min(im.size)
    new = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)


def load_rgb(path: str | os.PathLike, max_side: int | None = None) -> Image.Image:
    """Decode ``path`` upright (EXIF orientation) as RGB; first frame of GIF/TIFF.

    ``max_side`` bounds the shorter side (JPEGs then decode at reduced scale,
    which is much faster for phone photos). Raises DataError with the reason.
    """
    data = read_regular(path)  # never a FIFO or a device; bounded in size
    try:
        im = _open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (supported: jpg, png, webp, bmp, gif, tiff)") from None
    except Image.DecompressionBombError:
        raise DataError(f"{path}: decompression bomb (too many pixels); refused") from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    with im:
        problem = _size_problem(im)
        if problem:
            raise DataError(f"{path}: {problem}")
        try:
            if max_side and im.format in ("JPEG", "MPO"):
                # draft keeps at least the requested size, so sizes stay >= max_side
                scale = max_side / min(im.size)
                im.draft("RGB", (math.ceil(im.width * scale), math.ceil(im.height * scale)))
            im.load()
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:
                pass  # malformed EXIF: the pixels are still fine, just unrotated
            return shrink(to_rgb(im), max_side)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: corrupt or truncated image ({exc})") from None


def image_nbytes(im: Image.Image) -> int:
    bands = len(im.getbands())
    return im.width * im.height * bands


class DecodedCache:
    """Thread-safe LRU of decoded RGB images, bounded in bytes.

    Decoding a JPEG costs far more than the augmentations applied to it, and
    the same files are read every epoch, so keeping the (pre-shrunk) pixels
    in memory makes later epochs much faster. Images are shrunk to
    ``max_side`` on the shorter side before caching; pick it a bit above the
    transform's resize size (``cache_max_side``) so crops lose no detail that
    the model would have seen. Callers must not modify returned images.

    With DataLoader worker processes each worker holds its own copy, so the
    cache pays off most with ``num_workers=0`` or persistent workers.
    """

    def __init__(self, max_bytes: int, max_side: int | None = None):
        self.max_bytes = max(0, int(max_bytes))
        self.max_side = max_side
        self.hits = 0
        self.misses = 0
        self.bytes = 0
        self._items: OrderedDict[str, tuple[Image.Image, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> Image.Image:
        key = os.fspath(path)
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item[0]
            self.misses += 1
        # decode outside the lock so loader threads decode in parallel
        im = load_rgb(key, self.max_side)
        size = image_nbytes(im)
        if size > self.max_bytes:
            return im
        with self._lock:
            if key not in self._items:
                self._items[key] = (im, size)
                self.bytes += size
            while self.bytes > self.max_bytes and self._items:
                _, (_, old) = self._items.popitem(last=False)
                self.bytes -= old
        return im

    def __len__(self) -> int:
        return len(self._items)

    @property
    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "bytes": self.bytes, "items": len(self._items)}

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0

    # Worker processes started with "spawn" (macOS, Windows) pickle the
    # dataset; locks can't be pickled and shipping the pixels would be slow.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_items"] = OrderedDict()
        state["bytes"] = 0
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


def cache_max_side(data_config: dict, margin: float = 1.15) -> int:
    """Shorter-side bound for cached images, from timm's resolved data config.

    timm's eval transform resizes the shorter side to input_size / crop_pct
    before cropping; a 15% margin keeps random crops sharp.
    """
    size = data_config["input_size"]
    side = max(size[-2:]) if isinstance(size, (tuple, list)) else int(size)
    crop_pct = data_config.get("crop_pct") or 1.0
    return math.ceil(math.ceil(side / crop_pct) * margin)


def build_transform(data_config: dict, augmentation: str, training: bool):
    """timm's transform for the model's own data config (size, mean, std, crop).

    ``none`` gives the eval transform even for training; ``flip`` mirrors the
    eval-transformed image half the time (deterministic up to the mirror, so
    the frozen part of a model can be computed once per view); ``light`` adds
    mild random crops and flips, gentle on small datasets; ``strong`` adds
    RandAugment and random erasing, timm's ImageNet recipe.
    """
    from timm.data import create_transform
    if augmentation not in ("none", "flip", "light", "strong"):
        raise ValueError(f"augmentation must be none, flip, light or strong, got {augmentation!r}")
    common = {k: data_config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
              if data_config.get(k) is not None}
    if not training or augmentation == "none":
        return create_transform(is_training=False, **common)
    if augmentation == "flip":
        return _TensorHFlip(create_transform(is_training=False, **common))
    common.pop("crop_pct", None)
    common.pop("crop_mode", None)  # eval-only options; training crops randomly
    if augmentation == "light":
        return create_transform(is_training=True, scale=(0.6, 1.0), hflip=0.5,
                                color_jitter=None, auto_augment=None, re_prob=0.0, **common)
    return create_transform(is_training=True, auto_augment="rand-m9-mstd0.5", color_jitter=0.4,
                            re_prob=0.25, hflip=0.5, **common)


class _TensorHFlip:
    """The eval transform, then a horizontal mirror with probability 1/2 (flip after
    crop, so both views are exactly what the prefix cache stores)."""

    def __init__(self, base):
        self.base = base

    def __call__(self, im):
        import torch
        x = self.base(im)
        return x.flip(-1) if torch.rand(()) < 0.5 else x

    def __repr__(self) -> str:
        return f"TensorHFlip({self.base!r})"


class ImageDataset(TorchDataset):
    """(tensor, label) pairs for a DataLoader; decodes through the cache when given."""

    def __init__(self, samples: list, transform, cache: DecodedCache | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        im = self.cache.get(s.path) if self.cache is not None else load_rgb(s.path)
        return (self.transform(im) if self.transform is not None else im), s.label
