"""A Gradio component class with a method or two replaced, made without Gradio's metaclass step.

Subclassing a component the usual way (``class X(gr.Image)``) runs Gradio's ``ComponentMeta``,
which writes a ``.pyi`` stub beside the module that defines the class: a file written into the
installed package at import time (and a failure where site-packages is read-only). Calling
``ABCMeta.__new__`` with Gradio's metaclass as the type gives the same kind of class without that
step. The browser looks a component up by ``get_block_name()``, so the variant keeps its base's.
"""
from __future__ import annotations

import abc


def component_variant(base: type, name: str, **methods) -> type:
    """A subclass of the component class ``base`` named ``name`` with ``methods`` replaced."""
    return abc.ABCMeta.__new__(type(base), name, (base,), {
        **methods,
        "get_block_name": lambda self, _name=base.__name__.lower(): _name,
        "__module__": base.__module__,
    })
