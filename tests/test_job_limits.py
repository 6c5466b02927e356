"""No client can pile up trainings without end (#15 review): queued or running jobs are capped per
person and in all, and finished jobs leave memory after the newest few (their runs stay on disk)."""
from __future__ import annotations

from conftest import write_colour_folder

from lora_gui.config import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig
from lora_gui.jobs import registry
from lora_gui.jobs.device_queue import DeviceQueue
from lora_gui.jobs.registry import active_jobs, get_job, room_for_another, set_owner
from lora_gui.jobs.training_job import TrainingJob


def test_queued_jobs_are_capped_per_person_and_in_all_and_old_finished_ones_are_forgotten(tmp_path, monkeypatch):
    data = write_colour_folder(tmp_path / "Pictures" / "set", per_class=4)
    cfg = RunConfig(model=ModelConfig(name="resnet18", weights="random", image_size=32),
                    lora=LoraConfig(rank=2), data=DataConfig(source=str(data)),
                    train=TrainConfig(epochs=1, batch_size=4, num_threads=1))
    queue = DeviceQueue()
    ws = tmp_path / "ws"
    blocker = TrainingJob(cfg, workspace=str(ws), queue=queue)   # holds the device: the others wait in line
    assert queue.acquire("cpu", blocker)
    others = len(active_jobs())   # jobs other tests of this process left (the blocker among them)
    monkeypatch.setattr(registry, "MAX_LIVE_JOBS", others + 5)
    started = []

    def start(owner):
        job = TrainingJob(cfg, workspace=str(ws), queue=queue).start()
        set_owner(job, owner, "tab")
        started.append(job)

    try:
        for _ in range(registry.MAX_LIVE_PER_OWNER):
            assert room_for_another("ann") == ""
            start("ann")
        assert room_for_another("ann").startswith("you already have 3 trainings queued or running; stop one")
        assert room_for_another("ben") == ""
        start("ben")
        start("cat")
        assert room_for_another("dan").endswith("trainings are already queued or running on this server; "
                                                "try again when one has finished")
    finally:
        for job in started:
            job.stop()
        assert all(job.wait(60) for job in started)
        queue.release("cpu", blocker)
    assert {job.status for job in started} == {"stopped"}
    # what the Train tab then says of a job stopped while it waited: not "what it learned is saved"
    from lora_gui.ui.tabs.train_tab import headline
    assert headline(started[0].snapshot()) == ("Stopped before it started: nothing was trained or saved.",
                                               "Press Start training to begin again.")
    assert room_for_another("ann") == "" and room_for_another("dan") == ""

    # finished jobs: the newest KEEP_FINISHED stay findable, older ones leave memory, not disk
    monkeypatch.setattr(registry, "KEEP_FINISHED", 2)
    registry.register_job(blocker)   # any registration tidies up
    assert [get_job(j.id) for j in started[:-2]] == [None] * (len(started) - 2)
    assert [get_job(j.id) for j in started[-2:]] == started[-2:]
    assert all(j.run.path.is_dir() for j in started)
