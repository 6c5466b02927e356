"""The files that ship with lora_gui: the example dataset, the built-in presets and the logo.

The repository keeps them in its top-level ``assets/`` and ``presets/`` folders, where people
look for them and edit them. A wheel has no such folders beside the package, so the build
(``setup.py``) copies them into the package as ``lora_gui/_bundled/assets/...`` and
``lora_gui/_bundled/presets/...``: package data, which pip, pipx and zipapps all install with the
code, wherever site-packages is. Code asks here for them, never for a path beside the package:
the installed copy when there is one, else the checkout's folder (a source tree, an editable install).
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
INSTALLED = PACKAGE / "_bundled"      # what setup.py's build step fills in a wheel
CHECKOUT = PACKAGE.parent             # the repository root, when running from a source tree
# the word that stands for the example dataset wherever a data source is asked for (`--data example`)
EXAMPLE_WORD = "example"


def bundled_path(*parts: str) -> Path:
    """``bundled_path("assets", "example")``: that file or folder as installed, else in the checkout."""
    installed = INSTALLED.joinpath(*parts)
    return installed if installed.exists() else CHECKOUT.joinpath(*parts)


def example_dataset_path() -> Path:
    """The built-in Fashion-MNIST sample (4 classes of small PNGs)."""
    return bundled_path("assets", "example")


def source_path(source: str | os.PathLike) -> Path:
    """A data source as a path: the built-in example dataset for the word ``example`` (a file or
    folder of that name still wins), else ``source`` with ``~`` expanded."""
    path = Path(source).expanduser()
    if str(source).strip() == EXAMPLE_WORD and not path.exists():
        return example_dataset_path()
    return path


def builtin_presets_dir() -> Path:
    return bundled_path("presets")


def logo_path() -> Path:
    return bundled_path("assets", "logo.svg")


def builtin_preset(name: str) -> Path | None:
    """``quick-cpu-demo`` (or ``quick-cpu-demo.json``) -> that built-in preset's file, if there is one."""
    stem = name[:-5] if name.endswith(".json") else name
    if not stem or "/" in stem or "\\" in stem or stem.startswith("."):
        return None
    path = builtin_presets_dir() / f"{stem}.json"
    return path if path.is_file() else None
