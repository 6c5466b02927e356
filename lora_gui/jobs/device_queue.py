"""One training at a time per device; the others wait in arrival order."""
from __future__ import annotations

import threading

from .job_state import JobState


class DeviceQueue:
    """One training at a time per device; the others wait in arrival order."""

    def __init__(self):
        self._cond = threading.Condition()
        self._lines: dict[str, list[JobState]] = {}

    def acquire(self, device: str, job: JobState) -> bool:
        with self._cond:
            line = self._lines.setdefault(device, [])
            line.append(job)
            while line[0] is not job:
                if job._stop.is_set():
                    line.remove(job)
                    self._cond.notify_all()
                    return False
                self._cond.wait(0.2)
            return True

    def release(self, device: str, job: JobState) -> None:
        with self._cond:
            line = self._lines.get(device, [])
            if job in line:
                line.remove(job)
            self._cond.notify_all()

    def waiting(self, device: str) -> int:
        """How many jobs are in line for ``device`` (the running one included)."""
        with self._cond:
            return len(self._lines.get(device, []))

    def position(self, job: JobState) -> int | None:
        """0 while the job holds the device, N when N jobs are ahead of it."""
        with self._cond:
            for line in self._lines.values():
                if job in line:
                    return line.index(job)
        return None


DEVICE_QUEUE = DeviceQueue()
