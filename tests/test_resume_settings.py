"""Resume from the Runs tab shows the resumed run's own settings in the Train and Model tabs
(#15 QA pass: the fields kept the form's old values, "Epoch 11 of 12" beside Epochs 3, and the
next Start would have used them)."""
from __future__ import annotations

import gradio as gr
from conftest import write_colour_folder

from lora_gui.config import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig
from lora_gui.jobs.device_queue import DeviceQueue
from lora_gui.jobs.training_job import TrainingJob
from lora_gui.ui.fields import FIELD_NAMES
from lora_gui.ui.session import Session
from lora_gui.ui.tabs.runs_tab import resumed_settings


def test_resumed_settings_fill_the_fields_once(tmp_path):
    data = write_colour_folder(tmp_path / "Pictures" / "set", per_class=4)
    cfg = RunConfig(model=ModelConfig(name="resnet18", weights="random", image_size=96),
                    lora=LoraConfig(rank=6, alpha=12.0), data=DataConfig(source=str(data), augmentation="strong"),
                    train=TrainConfig(epochs=12, batch_size=4, num_threads=1))
    job = TrainingJob(cfg, workspace=str(tmp_path / "ws"), queue=DeviceQueue())   # as resume_run makes it
    session = Session()
    names = list(FIELD_NAMES)
    assert list(resumed_settings(session, names)[1:]) == [gr.skip()] * len(names)   # nothing resumed: untouched
    session.started(job)
    session.resumed_job = job.id
    _, *values = resumed_settings(session, names)
    shown = dict(zip(names, values))
    assert (shown["epochs"], shown["rank"], shown["image_size"], shown["augmentation"]) == (12, 6, 96, "strong")
    assert session.base_config is job.config and session.resumed_job == ""
    # once only: a later refresh leaves what the person has typed since
    _, *again = resumed_settings(session, names)
    assert again == [gr.skip()] * len(names)
