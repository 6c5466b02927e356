"""The ``--auth`` login with a brake on guessing.

Gradio checks a login by calling ``auth(username, password)`` as often as it is asked, so a
script could try passwords at full speed. ``LoginGuard`` is that callable: after
``max_failures`` wrong passwords for one user name it refuses that name (even with the right
password) for ``lock_s`` seconds, doubling with every further lock up to ``max_lock_s``. A
person who mistypes a few times waits a minute; a guesser gets a handful of tries per quarter of
an hour. It never sleeps inside the request (a sleeping login would tie up a server thread per
attempt, which is its own way to stall the app). Gradio answers "Incorrect credentials." for a
refusal either way, so a locked name reveals nothing; the server log says what happened.
"""
from __future__ import annotations

import hmac
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int = 0
    locks: int = 0
    locked_until: float = 0.0


class LoginGuard:
    def __init__(self, user: str, password: str, max_failures: int = 5, lock_s: float = 60.0,
                 max_lock_s: float = 900.0, clock=time.monotonic, max_names: int = 10_000):
        self._user, self._password = user, password
        self.max_failures, self.lock_s, self.max_lock_s = max_failures, lock_s, max_lock_s
        self._clock = clock
        self._max_names = max_names          # the table of names tried stays bounded
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, username: str, password: str) -> bool:
        now = self._clock()
        with self._lock:
            rec = self._records.get(username)
            if rec is not None and now < rec.locked_until:
                return False
            # compare both, always, in constant time: the answer's timing says nothing either
            ok = hmac.compare_digest(username.encode(), self._user.encode()) & \
                hmac.compare_digest(password.encode(), self._password.encode())
            if ok:
                self._records.pop(username, None)
                return True
            rec = self._records.pop(username, None) or _Record()
            self._records[username] = rec            # most recent last
            while len(self._records) > self._max_names:
                self._records.popitem(last=False)
            rec.failures += 1
            if rec.failures >= self.max_failures:
                wait = min(self.lock_s * 2 ** rec.locks, self.max_lock_s)
                rec.failures, rec.locks, rec.locked_until = 0, rec.locks + 1, now + wait
                print(f"login: {self.max_failures} wrong passwords for user {username[:40]!r}; "
                      f"that name is refused for {wait:.0f} s", file=sys.stderr)
            return False
