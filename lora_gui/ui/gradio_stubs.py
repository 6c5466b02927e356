"""Import Gradio without regenerating its type stubs: ~40 % of ``import gradio`` on a slow CPU.

Gradio's component metaclass calls ``gradio.component_meta.create_or_modify_pyi`` for every
component class it defines, at every import: it reads the component's source file, parses it with
``ast``, renders the class's event listeners into a ``.pyi`` stub and rewrites the stub in the
installed package if it differs. Those stubs are for type checkers and IDEs; they ship in Gradio's
wheel already, and nothing at run time reads them. On the 2-core VM this project is measured on,
the step took ~1.9 of ``import gradio``'s 4.0-4.5 s (2.1-2.3 s without it), and ``import gradio``
is most of the time until the app's page is served (issue 15, goal 3).

``install()`` puts a finder at the front of ``sys.meta_path`` that waits for
``gradio.component_meta`` to be executed (Python runs a package's ``__init__`` first, so the
function cannot be replaced from outside before the components are defined) and then swaps that
one function for a no-op, before any component class exists. Everything else Gradio does is
untouched: the classes, their events and the page are the same (``tests/test_gradio_stubs.py``).
If a Gradio release renames or drops the function, nothing is replaced and the import is merely
slower. ``LORA_GUI_GRADIO_STUBS=1`` leaves Gradio as it is.
"""
from __future__ import annotations

import importlib.abc
import os
import sys

MODULE = "gradio.component_meta"
FUNCTION = "create_or_modify_pyi"


def _no_stub(*args, **kwargs) -> None:
    """Gradio's stub writer, skipped: the installed stubs stay as the wheel shipped them."""


def _skip_stubs(module) -> None:
    if callable(getattr(module, FUNCTION, None)):
        setattr(module, FUNCTION, _no_stub)


class _StubSkipper(importlib.abc.MetaPathFinder):
    """Finds nothing itself: asks the other finders for gradio.component_meta and wraps its loader
    so that the stub writer is replaced right after the module's own code has run."""

    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        # once is enough. A new list rather than removing us from the old one: Python iterates the old
        # list while it asks us (and another thread may be iterating it), and removing an entry would
        # make that loop skip the finder after us.
        sys.meta_path = [f for f in sys.meta_path if f is not self]
        for finder in sys.meta_path:
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        own = getattr(loader, "__dict__", None)
        # a loader object, not a class (built-in importers), and not already wrapped; the wrapper is
        # used once and removed, so a loader shared by several modules (a zip archive's) is left as it was
        if exec_module is None or isinstance(loader, type) or own is None or "exec_module" in own:
            return spec

        def exec_then_skip(module):
            try:
                exec_module(module)
            finally:
                own.pop("exec_module", None)   # back to the class's own method
            _skip_stubs(module)

        try:
            loader.exec_module = exec_then_skip
        except (AttributeError, TypeError):   # a loader that takes no attributes: Gradio stays as it is
            pass
        return spec


def install() -> None:
    """Before ``import gradio``: make that import skip the stub writer (see the module's docstring)."""
    if os.environ.get("LORA_GUI_GRADIO_STUBS") == "1":
        return
    if MODULE in sys.modules:   # Gradio already imported: its classes exist, nothing left to skip
        _skip_stubs(sys.modules[MODULE])
        return
    if not any(isinstance(f, _StubSkipper) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubSkipper())
