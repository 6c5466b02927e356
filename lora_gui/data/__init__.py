"""Labelled image datasets from every shape people keep them in.

The public face of the data layer; the rest of lora_gui imports from here.
``load_dataset`` (``sources``) turns a folder, an archive or a CSV into a ``Dataset``
whose ``report`` accounts for every file. Scanning rules live in ``scan``,
hostile-input handling in ``archives``, safe file reads in ``files``, decoding in
``images``, the decoded-image cache in ``decoded_cache``, tensors (the only torch
import) in ``transforms``, the train/validation split in ``split`` and the
class-by-class builder in ``class_builder``. No UI code.
"""
from ..errors import DataError
from .archives import ArchiveLimits
from .bundled import example_dataset_path
from .class_builder import ClassBuilder
from .decoded_cache import DecodedCache, cache_max_side
from .images import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, load_rgb
from .scan import Dataset, FileReport, Sample, ValidationReport
from .sources import dataset_from_files, gallery_items, load_dataset
from .split import split_counts, split_dataset

__all__ = [
    "DataError", "ArchiveLimits", "MAX_IMAGE_PIXELS", "MIN_IMAGE_SIDE", "FileReport",
    "ValidationReport", "Sample", "Dataset", "load_dataset", "dataset_from_files", "ClassBuilder",
    "split_dataset", "split_counts", "example_dataset_path", "build_transform", "ImageDataset",
    "DecodedCache", "cache_max_side", "load_rgb", "gallery_items",
]


def __getattr__(name: str):
    # The torch-bound names load on first use: validating data (check-data, the app's Data tab)
    # never pays for torch and timm (issue #15.3).
    if name in ("ImageDataset", "build_transform"):
        from . import transforms
        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
