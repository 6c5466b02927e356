"""The health check's decisions belong to the person who made them (#15 review): in multi-user
mode two people on the same folder (the built-in example, a --data-root folder, the same archive)
each have their own record, and a training applies its starter's record only."""
from __future__ import annotations

from types import SimpleNamespace

from conftest import write_colour_folder

from lora_gui.config import RunConfig
from lora_gui.data.fixes import fixes_file, write_fix
from lora_gui.data.sources import load_dataset
from lora_gui.jobs.training_job import preflight
from lora_gui.ui.access import AccessPolicy, person_key
from lora_gui.ui.fields import DEFAULTS, config_from_values
from lora_gui.ui.session import Session
from lora_gui.ui.tabs.data_tab import DataActions


def test_one_persons_fixes_never_change_what_another_trains_on(tmp_path):
    folder = write_colour_folder(tmp_path / "Pictures" / "shared set", per_class=6)
    ws = tmp_path / "ws"
    multi = AccessPolicy(multi_user=True)
    ann, ben = Session(owner_id="browser:ann-0123456789abcdef"), Session(owner_id="browser:ben-0123456789abcdef")
    key_ann, key_ben = person_key(multi, ann), person_key(multi, ben)
    assert key_ann != key_ben and "ann" not in key_ann
    assert person_key(AccessPolicy(), ann) == ""   # one user: the workspace's own record, as the CLI uses

    # both load the same folder through the Data tab's handler
    actions = DataActions(SimpleNamespace(workspace=ws, policy=multi))
    for s in (ann, ben):
        actions.load_source(s, str(folder), "shared", 0.2)
    assert ann.dataset.fixes_by == key_ann and ben.dataset.fixes_by == key_ben
    everything = len(ann.dataset.samples)

    # Ann leaves one picture out (the Health check's "Remove from training")
    gone = ann.dataset.samples[0].path
    write_fix(ws, ann.dataset, gone, "exclude")
    assert fixes_file(ws, ann.dataset).parent.name == key_ann

    # Ann's page and Ann's training follow her record; Ben's, and the workspace's own (the CLI), do not
    assert gone not in {s.path for s in load_dataset(folder, ws, fixes_by=key_ann).samples}
    assert len(load_dataset(folder, ws, fixes_by=key_ben).samples) == everything
    assert len(load_dataset(folder, ws).samples) == everything
    cfg_ann = config_from_values(DEFAULTS, source=str(folder), fixes_by=ann.dataset.fixes_by)
    cfg_ben = config_from_values(DEFAULTS, source=str(folder), fixes_by=ben.dataset.fixes_by,
                                 base=RunConfig.from_dict({"data": {"fixes_by": key_ann}}))  # a preset can't borrow it
    assert cfg_ben.data.fixes_by == key_ben
    assert len(preflight(cfg_ann, str(ws)).samples) == everything - 1
    assert len(preflight(cfg_ben, str(ws)).samples) == everything
    # the run records whose record it trained with, so a resume uses the same
    assert RunConfig.from_dict(cfg_ann.to_dict()).data.fixes_by == key_ann


def test_a_fixes_record_name_is_never_a_path():
    import pytest

    from lora_gui.errors import ConfigError
    for bad in ("../other", "a/b", "x" * 65, 3):
        with pytest.raises(ConfigError, match="fixes_by must be empty or up to 64 letters"):
            RunConfig.from_dict({"data": {"fixes_by": bad}})
