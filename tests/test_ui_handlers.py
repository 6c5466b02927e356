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
    from lora_gui.ui.tabs.dataset_view import dataset_outputs
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
    ("batch_size", 0.0, "from 1 to 4096"), ("lr", None, "above 0 and at most 10"), ("seed", "x", "whole number"),
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


def test_catalog_facts_are_cached_in_the_workspace_not_computed_at_start(tmp_path):
    """#12.7: the backbone list's sizes cost ~7 s per start; now once, kept under the workspace."""
    from lora_gui.ui.catalog_info import CatalogInfo
    info = CatalogInfo(tmp_path)
    assert info.get("resnet18", compute=False) is None
    assert "resnet18" in dict((v, k) for k, v in info.choices())          # listed before any size is known
    info.fill()
    again = CatalogInfo(tmp_path)                                          # the next start reads the file
    assert again.get("resnet18", compute=False) == {"params": 11_176_512, "resolution": 224}
    assert (tmp_path / ".cache" / "catalog-info.json").is_file()
    assert "11.2M params" in again.label("resnet18")


def test_the_model_tab_says_which_backbones_work_offline(tmp_path):
    from lora_gui.ui.catalog_info import CatalogInfo
    text = CatalogInfo(tmp_path).offline_summary()
    assert "`tf_efficientnet_lite0`" in text.split(". The other")[0] and "needs internet" in text


def test_attention_targets_are_not_offered_for_a_cnn():
    from lora_gui.ui.tabs.model_tab import target_choices
    cnn = [v for _, v in target_choices("resnet18")]
    vit = [v for _, v in target_choices("vit_tiny_patch16_224")]
    assert "attention" not in cnn and "all-conv" in cnn and "auto" in cnn
    assert "attention" in vit


def test_presets_tab_opens_on_a_preset_that_works_offline(tmp_path):
    from lora_gui.ui.tabs.presets_tab import describe, offline_default
    path = offline_default(tmp_path)
    assert path is not None and path.endswith("quick-cpu-demo.json")
    assert "works offline" in describe(path, tmp_path)


def test_layer_table_has_lora_params_and_the_counts_agree(tmp_path):
    """#12.8: per-layer LoRA params add up to the trainable line; the total = list size + head + LoRA."""
    from lora_gui.ui.catalog_info import CatalogInfo
    from lora_gui.ui.tabs.model_tab import layer_summary
    text, rows = layer_summary("resnet18", "auto", 8, False, False, 3)
    lora_total = sum(r[4] for r in rows)
    assert lora_total > 0 and f"({lora_total:,} parameters)" in text
    backbone = CatalogInfo(tmp_path).get("resnet18")["params"]
    assert f"backbone's {backbone:,}" in text and "3-class head" in text


def test_runs_table_names_the_dataset_and_reads_like_a_date(tmp_path):
    """#12.8: a dataset column and '2 Dec 13:15:02 · model' instead of the folder name; the folder
    stays in the last column (a click on a row finds its run by it)."""
    from lora_gui.config import DataConfig, RunConfig
    from lora_gui.store.records import RunRecord, SplitRecord
    from lora_gui.store.run_folder import RunFolder
    from lora_gui.ui.tabs.runs_tab import runs_table, runs_with_status
    for name, source, started in (("resnet18-20261202-131502-ab12", "/root/Pictures/pets", "2026-12-02 13:15:02"),
                                  ("r2", str(data.example_dataset_path()), "2026-12-03 09:00:00")):
        run = RunFolder(tmp_path / name).create()
        cfg = RunConfig(data=DataConfig(source=source))
        RunRecord(cfg, ["a", "b"], [], {"input_size": [3, 32, 32]}).write(run)
        SplitRecord([], []).write(run)
        run.update_status(status="finished", started=started, duration_s=75.0)
    table = runs_table(runs_with_status(tmp_path))
    assert list(table["dataset"]) == ["example dataset", "pets"]           # newest first
    assert table["run"][1] == "2 Dec 13:15:02" and table["model"][1] == "tf_efficientnet_lite0"
    assert table["folder"][1] == "resnet18-20261202-131502-ab12" and table["training time"][1] == "1 min 15 s"


def test_runs_list_keeps_a_pick_but_selects_a_new_run(tmp_path):
    """Clicking Runs after a training selected an older run (the pick made when the tab was first
    opened stayed). A person's pick stays across refreshes until a newer run appears."""
    from lora_gui.ui.session import Session
    from lora_gui.ui.tabs.runs_tab import pick_after_refresh
    session = Session()
    assert pick_after_refresh(None, [], session) is None
    assert pick_after_refresh(None, ["/w/r1"], session) == "/w/r1"
    assert pick_after_refresh("/w/r1", ["/w/r2", "/w/r1"], session) == "/w/r2"      # a new run appeared
    assert pick_after_refresh("/w/r1", ["/w/r2", "/w/r1"], session) == "/w/r1"      # the person picked r1
    assert pick_after_refresh("/w/gone", ["/w/r2", "/w/r1"], session) == "/w/r2"    # deleted: the newest


def _snap(status, message, step=0, **kw):
    from lora_gui.jobs.job_state import JobSnapshot
    return JobSnapshot("j", "/r", status, message, 1, 3, step, 30, kw.pop("eta_s", None), None, **kw)


@pytest.mark.parametrize("status, message, says", [
    ("paused", "paused; press Resume to continue", "Press Resume to continue"),
    ("finished", "best validation accuracy 95.0% (epoch 2)", "95.0% of the validation images"),
    ("finished", "best validation accuracy 95.0% (epoch 2)", "4 · Test"),
    ("stopped", "stopped by request; the adapter so far is saved in last/", "Resume training in the Runs tab"),
    ("failed", "the loss became nan at step 3: training diverged", "Lower the learning rate"),
    ("failed", "ran out of memory; use a smaller batch size", "smaller batch size")])
def test_progress_says_what_happened_and_what_next_in_plain_words(status, message, says):
    """#12.5: no 'Paused — paused', no 'last/'; every end state says what to do next."""
    from lora_gui.ui.tabs.train_tab import progress_html
    text = progress_html(_snap(status, message, step=5))
    assert says in text
    assert "last/" not in text and "— paused" not in text and "Paused — " not in text


def test_progress_points_to_the_first_model_once_it_is_saved(tmp_path):
    """Issue 15: seconds after Start the run has a model to try; the progress line says where."""
    from lora_gui.jobs.job_state import JobSnapshot
    from lora_gui.store.run_folder import RunFolder
    from lora_gui.ui.tabs.train_tab import progress_html
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.update_status(status="running")

    def text(step):
        return progress_html(JobSnapshot("j", str(run.path), "running", "training on cpu", 1, 3, step, 30, None, None))
    assert "4 · Test" not in text(0) and "4 · Test" not in text(5)
    run.update_status(first_model={"stage": "linear probe", "val_acc": None})
    assert "Getting ready" in text(0) and "A first model is ready: try it in 4 · Test" in text(0)
    assert "A first model is ready" in text(5) and "Pause or Stop" in text(5)


def test_details_keep_the_engine_words_newest_line_first():
    """#12.8 of the log: the newest line is at the top, where the box opens."""
    from lora_gui.ui.tabs.train_tab import details_text
    log = ["10:00:00 first", "10:00:01 frozen prefix cached", "10:00:02 newest"]
    text = details_text(_snap("running", "training on cpu", log=log))
    assert text.splitlines()[:2] == ["[running] training on cpu", "10:00:02 newest"]


def test_charts_wait_for_data_and_accuracy_says_when_it_comes():
    """#12.6: no empty axes; during epoch 1 a note stands in for the accuracy chart."""
    from lora_gui.ui.tabs.train_tab import figures
    rows = [{"kind": "step", "epoch": 1, "step": 1, "loss": 1.2, "lr": 1e-3, "images_per_s": 10.0, "time": 0.0}]
    loss, acc, note, lr = figures(_snap("running", "", step=1, step_rows=rows))
    assert loss.visible and not acc.visible and note.visible and lr.visible
    epoch = [{"kind": "epoch", "epoch": 1, "step": 5, "train_acc": 0.5, "val_acc": 0.6, "val_loss": 1.0}]
    loss, acc, note, _ = figures(_snap("running", "", step=5, step_rows=rows, epoch_rows=epoch))
    assert acc.visible and not note.visible


def test_validation_report_groups_non_images_by_extension_and_filters(make_image_folder):
    """#12.8: thousands of files: 'not an image' grouped per extension; the table filters by status."""
    from lora_gui.ui.tabs.dataset_view import _report_rows, report_groups
    root = make_image_folder({f"{c}/{i}.png": None for c in ("cat", "dog") for i in range(3)}, "Pictures")
    for i in range(3):
        (root / "cat" / f"notes{i}.txt").write_text("x")
    (root / "dog" / "meta.json").write_text("{}")
    (root / "dog" / "README").write_text("x")
    ds = data.load_dataset(str(root), root.parent / "ws")
    text = report_groups(ds)
    assert "- used for training: 6 files" in text
    assert "not an image \\(.txt\\): 3 files" in text and "not an image \\(.json\\): 1 files" in text
    assert {r[2] for r in _report_rows(ds, "skipped")} == {"skipped"} and len(_report_rows(ds, "used")) == 6


def test_folder_upload_meta_from_the_browser():
    """#12.9: the browser sends the folder's name and what it left out; both reach the summary label."""
    import json

    from lora_gui.ui.tabs.data_tab import folder_meta
    raw = json.dumps({"paths": ["pets/cat/1.jpg"], "folder": "pets", "skipped": {".txt": 10, ".json": 2}})
    assert folder_meta(raw) == (["pets/cat/1.jpg"], "pets",
                                "12 other files left out in the browser: .txt 10, .json 2")
    assert folder_meta(json.dumps(["a/b.png"])) == (["a/b.png"], "", "")
    assert folder_meta("{not json") == ([], "", "")


def test_a_failure_that_already_says_what_to_do_says_it_once():
    from lora_gui.ui.tabs.train_tab import progress_html
    message = "the loss became 2.07e+04 at step 2: training diverged. Lower the learning rate (e.g. by 10x) and start again"
    assert progress_html(_snap("failed", message, step=2)).lower().count("lower the learning rate") == 1


def test_details_never_show_a_traceback():
    from lora_gui.ui.tabs.train_tab import details_text
    log = ["13:37:19 [failed] diverged", "13:37:19 Traceback (most recent call last):",
           '  File "/x/loop.py", line 279, in _check_loss', "lora_gui.errors.TrainingFailed: diverged"]
    text = details_text(_snap("failed", "diverged", log=log))
    assert "Traceback" not in text and "File " not in text and "3 technical lines" in text


def test_live_charts_are_redrawn_for_a_new_epoch_but_not_for_every_step(tmp_path, monkeypatch):
    """A running job's charts: drawn at once, then not again for each new step row within
    CHART_EVERY_S (each redraw costs the server and the browser), but at once for an epoch."""
    from lora_gui.config import DataConfig, ModelConfig, RunConfig
    from lora_gui.jobs.training_job import TrainingJob
    from lora_gui.ui.session import Session
    from lora_gui.ui.tabs import train_tab

    cfg = RunConfig(model=ModelConfig(name="resnet18", weights="random"), data=DataConfig(source=str(tmp_path)))
    job = TrainingJob(cfg, workspace=str(tmp_path / "ws"))   # not started: its reporter is driven as the loop does
    session = Session()
    session.attach(job)
    clock = [1000.0]
    monkeypatch.setattr(train_tab, "_clock", lambda: clock[0])

    def step(n):
        job.report_metrics({"kind": "step", "epoch": 1, "step": n, "loss": 1.0 / n, "lr": 1e-3,
                            "images_per_s": 10.0, "time": float(n)})

    def charts_changed():
        out = train_tab.poll_job(session)
        return all(isinstance(p, gr.Plot) for p in (out[2], out[3], out[5]))

    job.report_status("running", "training")
    step(1)
    assert charts_changed()                      # the first rows: drawn at once
    step(2)
    clock[0] += 1.0
    assert not charts_changed()                  # one more step a second later: wait
    job.report_metrics({"kind": "epoch", "epoch": 1, "step": 2, "train_acc": 0.5, "val_acc": 0.6, "val_loss": 1.0})
    assert charts_changed()                      # a new epoch: at once
    step(3)
    clock[0] += train_tab.CHART_EVERY_S
    assert charts_changed()                      # steps only, but CHART_EVERY_S later
    assert not charts_changed()                  # nothing new: nothing redrawn


def test_each_page_gets_its_own_session_and_no_load_event_replaces_it(demo):
    """The session State's default is a Session, not a function: Gradio runs a callable default in
    a page-load event of its own, which overwrote the session the page had just identified when the
    two overlapped (a loaded machine): that tab's training then belonged to nobody, and another tab
    of the same browser was not offered it. Each page still gets a new session with its own id."""
    import copy

    from lora_gui.ui.session import Session
    state = demo.lora_ctx.session
    assert isinstance(state.value, Session) and not callable(state.value)
    assert getattr(state, "load_event_to_attach", None) is None
    used = copy.deepcopy(state.value)
    used.owner_id, used.job_id = "browser:someone", "run-1"
    pages = [copy.deepcopy(state.value), copy.deepcopy(used)]
    assert len({p.id for p in pages} | {state.value.id, used.id}) == 4
    assert all(p.owner_id == "" and p.job_id is None for p in pages)


def test_in_multi_user_mode_nobody_replaces_anothers_saved_preset(tmp_path):
    """Saved presets are shared (anyone may apply one); replacing one is its author's alone, once
    the app serves several people (#15 review)."""
    import gradio as gr

    from lora_gui.config import load_preset
    from lora_gui.ui.access import AccessPolicy, person_key
    from lora_gui.ui.fields import DEFAULTS, FIELD_NAMES
    from lora_gui.ui.session import Session
    from lora_gui.ui.tabs.presets_tab import save_preset
    multi = AccessPolicy(multi_user=True)
    ann, ben = (person_key(multi, Session(owner_id=f"browser:{who}-0123456789abcdef")) for who in ("ann", "ben"))
    values = [DEFAULTS[n] for n in FIELD_NAMES]
    path = save_preset(tmp_path, "team-resnet", "Ann's", False, FIELD_NAMES, values, saved_by=ann)
    assert load_preset(path)[1]["description"] == "Ann's"          # still an ordinary preset to apply
    with pytest.raises(gr.Error, match="is someone else's: save yours under another name"):
        save_preset(tmp_path, "team-resnet", "Ben's", True, FIELD_NAMES, values, saved_by=ben)
    save_preset(tmp_path, "team-resnet", "Ann's, again", True, FIELD_NAMES, values, saved_by=ann)
    assert load_preset(path)[1]["description"] == "Ann's, again"
    save_preset(tmp_path, "team-resnet", "the one user", True, FIELD_NAMES, values)   # single-user mode: no owners
    assert load_preset(path)[1]["description"] == "the one user"


@pytest.mark.parametrize("api_name", ["start_training", "resume_run"])
def test_a_test_tab_opened_before_a_run_starts_follows_it(demo, api_name):
    """Start waits for the engine's imports in the first seconds after launch: a person who clicks Start
    and opens 4 · Test at once saw "No model yet" for good (the tab checked for a run before Start had
    made one, and nothing told it later). Start and Resume now end by running the Test tab's follower,
    which names the run and turns its timer on (seen in Chromium: "setting up", then the first model)."""
    from lora_gui.ui.tabs.test_tab import follow_pending
    by_id = {fn._id: fn for fn in demo.fns.values()}
    first = next(fn for fn in demo.fns.values() if fn.api_name == api_name)
    chain, todo = [], [first._id]
    while todo:   # every step that runs after it (.then), however deep
        parent = todo.pop()
        for fn in by_id.values():
            if fn.trigger_after == parent:
                chain.append(fn)
                todo.append(fn._id)
    followers = [fn for fn in chain if getattr(fn.fn, "__wrapped__", fn.fn) is follow_pending]
    assert followers, f"nothing after {api_name} updates the Test tab"
    outputs = followers[0].outputs
    assert any(getattr(o, "elem_id", None) == "lg-test-source" for o in outputs)
    assert any(isinstance(o, gr.Timer) for o in outputs)


def test_a_refused_upload_is_emptied_from_its_input(demo, tmp_path):
    """A text file named holiday.png dropped on 4 · Test (or the Demo tab's photo): the prediction says
    why it was refused, and the input is emptied; it used to keep a broken-image icon and send the same
    file again with every click. Checked from the file's header, without decoding it again."""
    from pathlib import Path

    from lora_gui.ui.image_input import _clear_refused
    bad = tmp_path / "holiday.png"
    bad.write_text("not really a picture")
    good = next((Path(__file__).resolve().parents[1] / "assets" / "example" / "bag").iterdir())
    assert _clear_refused({"path": str(bad), "orig_name": "holiday.png"}) is None
    assert _clear_refused({"path": str(good), "orig_name": good.name}) == gr.skip()
    assert _clear_refused(None) == gr.skip()
    wired = {fn.inputs[0].elem_id for fn in demo.fns.values()
             if fn.fn is _clear_refused and fn.preprocess is False and fn.outputs == fn.inputs}
    assert wired == {"lg-test-image", "lg-demo-photo"}


def test_predict_with_no_picture_says_so(demo):
    """Predict pressed with an empty input (nothing dropped yet, or a refused upload that was emptied)
    used to answer nothing at all; now one sentence says what to do. Emptying the input by hand still
    just clears the answer (the change event keeps the silent path)."""
    from lora_gui.ui.session import Session
    from lora_gui.ui.tabs.test_tab import NO_PICTURE, on_predict, on_predict_click
    with pytest.raises(gr.Error, match="No picture to classify yet"):
        on_predict_click(None, Session())
    assert on_predict(None, Session())[0] is None
    by_api = {fn.api_name: getattr(fn.fn, "__wrapped__", fn.fn) for fn in demo.fns.values() if fn.api_name}
    assert by_api["predict"] is on_predict_click and "drop one on 'Image to classify'" in NO_PICTURE
