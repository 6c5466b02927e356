"""An image input that refuses an unusable upload with a sentence instead of an "Error" pill.

Gradio decodes an uploaded image in the component's ``preprocess``, before any handler runs:
a 100-megapixel photo makes Pillow raise ``DecompressionBombError`` there (we lowered Pillow's
limit to ``data.MAX_IMAGE_PIXELS`` for the whole process), a renamed text file raises
``UnidentifiedImageError``, and either escapes to the browser as a bare "Error" on every output.
``ImageInput`` checks the file's header first (Pillow reads only the header on open) and hands
the handler an ``UnusableUpload`` instead of pixels; ``common.friendly`` raises it inside the
handler's guard, so the person gets the usual toast and the outputs keep their values.
"""
from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
from PIL import Image

from ..data.images import KNOWN_UNSUPPORTED, MAX_IMAGE_PIXELS, PIL_FORMATS, too_many_pixels
from ..errors import DataError
from .component_variant import component_variant


class UnusableUpload(DataError):
    """An uploaded picture that cannot be used; raised by the event guard in place of the handler."""


def check_upload(path: str, name: str = "the picture") -> UnusableUpload | None:
    """Why the image file at ``path`` cannot be used, or None. Reads only its header."""
    try:
        # only the decoders the data layer uses: an .eps upload would otherwise reach Ghostscript
        with Image.open(path, formats=PIL_FORMATS) as im:
            w, h = im.size
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        return UnusableUpload(f"{name} has {too_many_pixels(int(pixels[1]) if pixels else None)}; "
                              "scale it down and try again")
    except Exception:   # UnidentifiedImageError, OSError, ValueError; a format plugin may raise others
        # on a crafted file (9,000 mutated headers of six formats raised none, but nothing promises it)
        ext = Path(name if name != "the picture" else path).suffix.lower()
        if ext in KNOWN_UNSUPPORTED:
            return UnusableUpload(f"{name} is a {ext} picture, a format this app does not read; "
                                  "save it as JPEG or PNG and try again")
        return UnusableUpload(f"{name} could not be read as a picture (damaged, or not an image at all); "
                              "use a JPEG, PNG, WebP, BMP, GIF or TIFF")
    if w * h > MAX_IMAGE_PIXELS:
        return UnusableUpload(f"{name} is {w}×{h} ({w * h / 1e6:.0f} MP), more than the {MAX_IMAGE_PIXELS // 10**6} MP "
                              "this app accepts; scale it down and try again")
    return None


def _header_problem(path, orig_name) -> UnusableUpload | None:
    """``check_upload`` for an uploaded file (an SVG is Gradio's own business: it is not decoded)."""
    if not path or str(path).lower().endswith(".svg"):
        return None
    return check_upload(path, orig_name or "the picture")


def _preprocess(self, payload):
    problem = _header_problem(getattr(payload, "path", None), getattr(payload, "orig_name", None))
    if problem is not None:
        return problem
    try:
        return gr.Image.preprocess(self, payload)
    except Exception as exc:   # a truncated file passes the header check and fails while decoding
        return UnusableUpload(f"the picture could not be decoded ({type(exc).__name__}); "
                              "try another file or save it again as JPEG or PNG")


# gr.Image whose preprocess hands the handler an UnusableUpload rather than raising
ImageInput = component_variant(gr.Image, "ImageInput", preprocess=_preprocess)


def _clear_refused(payload):
    """The input emptied when its upload is refused (from the file's header only: the picture is not
    decoded a second time). It cannot raise, so it needs no guard; the handler that uses the picture
    says why it was refused, once. ``payload`` is the upload as Gradio sends it unprocessed: a dict."""
    payload = payload or {}
    return None if _header_problem(payload.get("path"), payload.get("orig_name")) is not None else gr.skip()


_clear_refused._lg_guarded = True


def forget_refused(image) -> None:
    """An ``ImageInput`` that is emptied when its upload is refused: the browser otherwise kept
    showing a broken-image icon where the picture would be, and sent the same file again with
    every later click."""
    image.upload(_clear_refused, image, image, preprocess=False, show_progress="hidden",
                 api_visibility="private")
