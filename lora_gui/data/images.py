"""Decoding user images safely, the same way for validation, training and prediction.

Everything that turns a file into pixels goes through ``probe_image`` (is it
a usable image, and if not, why) or ``load_rgb`` (the pixels, upright, RGB),
so an image that passed validation decodes identically in every epoch and at
inference time. Pillow only: no torch here, so validating a dataset (``check-data``,
the app's Data tab) starts without loading the training stack. No UI code here.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from .files import read_regular

# Refuse (not warn, as Pillow does) above this many pixels: a 40 MP image is
# already beyond any camera a user trains from, while a few hundred bytes of
# PNG can claim gigapixels and exhaust memory when decoded.
MAX_IMAGE_PIXELS = 40_000_000
MIN_IMAGE_SIDE = 8
# Pillow's own guard, for every Image.open in the process (also the ones a web framework does
# for an upload): it warns above this many pixels and raises DecompressionBombError above twice
# as many. Our own decoders turn the warning into a refusal locally (``_no_bombs``), so nothing
# has to silence Pillow's warning globally.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


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
KNOWN_UNSUPPORTED = {".heic", ".heif", ".avif", ".jxl", ".jp2", ".psd", ".svg", ".ico",
                      ".ppm", ".pgm", ".pbm", ".eps", ".dng", ".cr2", ".nef", ".arw", ".raw"}


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


def too_many_pixels(pixels: int | None) -> str:
    """The reason for a picture above MAX_IMAGE_PIXELS (a huge scan, or a few bytes claiming gigapixels)."""
    size = f"{pixels / 1e6:,.0f} MP; " if pixels else ""
    return f"too many pixels ({size}the limit is {MAX_IMAGE_PIXELS // 10**6} MP)"


def _size_problem(im: Image.Image) -> str:
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        return too_many_pixels(w * h)
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
    if not data:
        return ProbeResult(reason="empty file (0 bytes)", sha1=digest)
    try:
        im = _open(io.BytesIO(data))
    except UnidentifiedImageError:
        ext = Path(path).suffix.lower()
        if ext in KNOWN_UNSUPPORTED:
            return ProbeResult(reason=f"unsupported image format ({ext}); convert it to jpg or png", sha1=digest)
        return ProbeResult(reason="not an image", sha1=digest)
    except Image.DecompressionBombError as exc:  # Pillow's own, far above our limit
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        return ProbeResult(reason=too_many_pixels(int(pixels[1]) if pixels else None), sha1=digest)
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
        raise DataError(f"{path}: {too_many_pixels(None)}; scale it down and try again") from None
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
