"""The UI's event handlers called over plain values, without a browser (issue #12)."""
from __future__ import annotations


import gradio as gr
import pytest

from lora_gui import data
from lora_gui.errors import DataError
from lora_gui.ui.common import friendly, md


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from lora_gui.ui.app import build_app
    return build_app(tmp_path_factory.mktemp("ws"))


def test_every_event_handler_is_guarded(demo):
    """#12.4: no handler may let an exception reach Gradio from the browser (Error pills)."""
    handlers = [f for f in demo.fns.values() if f.fn is not None]
    assert handlers
    # app.py's gr.State(lambda: Session()) factory is wired when the Blocks closes, after the
    # guard ran; it only builds an empty Session
    unguarded = [f.name for f in handlers if not getattr(f.fn, "_lg_guarded", False)
                 and not f.fn.__qualname__.startswith("build_app.")]
    assert unguarded == []


def test_a_failing_handler_keeps_its_outputs_in_the_browser():
    def load(path):
        raise DataError("no usable images found in <folder>/<class>")
    # called outside a gradio_client request: the browser path, a toast and no output change
    with pytest.warns(UserWarning, match="&lt;folder&gt;"):
        assert friendly(load)("/x") == gr.skip()


def test_unexpected_errors_are_named_not_raised():
    def boom():
        return {}["missing"]
    with pytest.warns(UserWarning, match="boom failed unexpectedly: KeyError"):
        assert friendly(boom)() == gr.skip()


def test_markdown_escaping_keeps_text_literal():
    assert md("<b>cat</b>_1 *x*") == r"&lt;b&gt;cat&lt;/b&gt;\_1 \*x\*"


def test_dataset_errors_are_escaped_and_said_once(tmp_path):
    """#12.5: '(<folder>/<class>/<image>)' was eaten as HTML and the sentence printed twice."""
    from lora_gui.ui.tabs.data_tab import dataset_outputs
    folder = tmp_path / "Pictures" / "<b>odd"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("not an image")
    ds = data.load_dataset(str(folder), tmp_path / "ws")
    summary = dataset_outputs(ds, f"Folder '{folder.name}'", 0.2)[0]
    assert summary.count("no usable images found") == 1
    assert "\\(&lt;folder&gt;/&lt;class&gt;/&lt;image&gt;\\)" in summary
    assert "&lt;b&gt;odd" in summary and "<b>" not in summary



@pytest.mark.parametrize("name, value, words", [
    ("rank", 0, "from 1 to 1024, got 0"), ("rank", -5.0, "got -5"), ("rank", "abc", "got 'abc'"),
    ("alpha", -1.0, "positive"), ("dropout", 0.99 + 0.01, "[0, 1)"), ("epochs", 2.5, "from 1 to 10000"),
    ("batch_size", 0.0, "from 1 to 4096"), ("lr", None, "positive number"), ("seed", "x", "whole number"),
    ("val_fraction", 1.0, "[0, 1)"), ("image_size", 20, "from 32 to 1024")])
def test_each_bad_number_gets_one_message_from_the_config(name, value, words):
    """#12.6: the message is config.py's own (no second copy of the ranges), once, without 'config: lora:'."""
    from lora_gui.ui.fields import NUMBERS, problems_text
    assert name in NUMBERS
    text = problems_text([name], [value])
    assert words in text and "config:" not in text and text.count("must") == 1


def test_numbers_pass_gradio_preprocess_as_typed():
    """'abc' or -5 must reach the handler (and its message), not fail in Gradio's own bounds check."""
    from lora_gui.ui.fields import lenient
    slider, number = lenient(gr.Slider(1, 64, step=1), gr.Number(minimum=0.01))
    assert slider.preprocess(-5) == -5 and number.preprocess("abc") == "abc"


def test_layer_summary_follows_the_rank_or_says_it_waits():
    from lora_gui.ui.tabs.model_tab import layer_summary
    text, rows = layer_summary("resnet18", "auto", 0, False, False, 2)
    assert rows == [] and "once the rank above is fixed" in text
    low, _ = layer_summary("resnet18", "auto", 4, False, False, 2)
    high, _ = layer_summary("resnet18", "auto", 1000.0, False, False, 2)
    assert low != high and "trainable" in high
