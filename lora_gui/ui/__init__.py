"""The Gradio app, the only part of lora_gui that imports gradio."""
from .gradio_stubs import install as _skip_gradio_stub_writing

# before any module of this package imports gradio: ~40 % of that import on a slow CPU (gradio_stubs.py)
_skip_gradio_stub_writing()
