"""--auth: the login works, and guessing is braked (ui/login_guard.py), on the real launched app."""
from __future__ import annotations

import httpx
import pytest
from conftest import launched_app

from lora_gui.ui.login_guard import LoginGuard

pytestmark = pytest.mark.timeout(300)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_wrong_passwords_lock_the_name_for_longer_each_time():
    clock = FakeClock()
    guard = LoginGuard("ada", "s3cret", max_failures=3, lock_s=60, max_lock_s=200, clock=clock)
    assert guard("ada", "s3cret")
    for _ in range(3):
        assert not guard("ada", "guess")
    assert not guard("ada", "s3cret"), "locked: even the right password is refused"
    assert guard("bob", "x") is False and guard("ada ", "s3cret") is False
    clock.now += 61
    assert guard("ada", "s3cret"), "the lock ends"
    for _ in range(3):
        guard("ada", "guess")
    for _ in range(3):              # a second series right after ...
        clock.now += 61
        guard("ada", "guess")
    clock.now += 61
    assert not guard("ada", "s3cret"), "... the second lock is longer (120 s)"
    clock.now += 60
    assert guard("ada", "s3cret")


def test_the_table_of_names_tried_stays_bounded():
    guard = LoginGuard("ada", "pw", max_names=50)
    for i in range(1000):
        guard(f"name{i}", "x")
    assert len(guard._records) == 50


def test_launched_app_with_auth_locks_a_guessed_name(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with launched_app(workspace, args=("--auth", "ada:correct-horse")) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/config").status_code == 401          # nothing without a login
            ok = http.post("/login", data={"username": "ada", "password": "correct-horse"})
            assert ok.status_code == 200 and ok.json() == {"success": True}
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(5):
                bad = http.post("/login", data={"username": "ada", "password": "guess"})
                assert bad.status_code == 400
            locked = http.post("/login", data={"username": "ada", "password": "correct-horse"})
            assert locked.status_code == 400, "the right password is refused while the name is locked"
    log = (workspace.parent / next(p.name for p in workspace.parent.glob("app-*.log"))).read_text()
    assert "refused for 60 s" in log
