"""#12.6: the time left comes from the recent step rate, never from set-up time."""
from __future__ import annotations

import pytest
from test_train import make_config, write_colour_folder

from lora_gui.store.run_folder import RunFolder
from lora_gui.training.eta import StepRate
from lora_gui.training.loop import Trainer
from lora_gui.training.reporter import RecordingReporter


def test_step_rate_uses_the_last_steps_only():
    rate = StepRate(window=2)
    assert rate.eta(10) is None
    rate.mark(100.0, 1)            # set-up + first step: 100 s
    assert rate.eta(10) is None    # one mark is no rate
    for step in (2, 3, 4):
        rate.mark(100.0 + 2 * (step - 1), step)   # then 2 s per step
    assert rate.eta(10) == pytest.approx(20.0)


def test_eta_reported_by_the_loop_is_remaining_steps_times_recent_rate(tmp_path):
    data_dir = write_colour_folder(tmp_path / "data")
    cfg = make_config(data_dir, epochs=6)          # 5 steps per epoch: 30 steps
    reporter = RecordingReporter()
    Trainer(cfg, RunFolder(tmp_path / "run").create(), "cpu", reporter, workspace=str(tmp_path)).run()
    times = {r["step"]: r["time"] for r in reporter.rows if r["kind"] == "step"}
    total = max(times)
    etas = {step: eta for _, step, _, eta in reporter.progress if step in times}
    assert etas[1] is None                         # after the first step only set-up is known
    for k in range(2, total + 1):
        first = max(1, k - 20)
        recent = (times[k] - times[first]) / (k - first)
        assert etas[k] == pytest.approx(recent * (total - k), rel=1e-6, abs=1e-9), k


def test_training_time_leaves_out_pauses(tmp_path):
    """#12.8: the Runs tab's training time is time spent training: a pause is not counted. The bound
    compares clock readings of the same run (a 1.5 s pause against 0.2 s of rounding), not speeds."""
    import time

    from test_train import hook_steps, new_job, wait_until
    data_dir = write_colour_folder(tmp_path / "data")
    job = new_job(make_config(data_dir), tmp_path)
    hook_steps(job, lambda j, row: j.pause() if row["step"] == 2 else None)
    started = time.time()
    job.start()
    wait_until(lambda: job.status == "paused", what="pause at step 2")
    time.sleep(1.5)
    job.unpause()
    assert job.wait(120) and job.status == "finished", job.message
    wall = time.time() - started
    assert job.paused_seconds >= 1.45   # the job's own clock readings: a few ms either side of the sleep
    assert job.run.read_status()["duration_s"] <= wall - job.paused_seconds + 0.2
