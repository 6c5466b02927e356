"""Ownership and isolation through the real launched app and real gradio_client clients (#12, #13).

One server in multi-user mode (--host 0.0.0.0 --multi-user --data-root D): two clients
that must not see or control each other's jobs and runs, files of the workspace that
must not be downloadable by URL, and server paths that a remote client may read only
under --data-root.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import REPO, launched_app, offline_env, write_colour_folder
from test_app_client import FIELD_VALUES

pytestmark = pytest.mark.timeout(400)


def _values(**over):
    from lora_gui.ui.fields import FIELD_NAMES
    v = dict(FIELD_VALUES, **over)
    return [v[n] for n in FIELD_NAMES]


def _non_loopback_address() -> str | None:
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return next((a for a in out if "." in a and not a.startswith("127.")), None)


@pytest.fixture(scope="module")
def home_folders():
    """Two image folders under $HOME (outside /tmp and the app's working folder); removed afterwards."""
    root = Path.home() / f"lg-test-{uuid.uuid4().hex[:8]}"
    allowed = write_colour_folder(root / "allowed" / "set", per_class=6)
    other = write_colour_folder(root / "other" / "set", per_class=6)
    yield root, allowed, other
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def multi_server(tmp_path_factory, home_folders):
    root, _, _ = home_folders
    workspace = tmp_path_factory.mktemp("multi") / "ws"
    workspace.mkdir()
    stale = workspace / ".gradio_cache" / "0123abcd" / "left-from-last-time.zip"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    with launched_app(workspace, args=["--host", "0.0.0.0", "--multi-user", "--data-root", str(root / "allowed")]) as url:
        assert not stale.exists(), "the Gradio cache inside the workspace is emptied at start"
        yield url, workspace


def _client(url):
    from gradio_client import Client
    return Client(url, analytics_enabled=False, verbose=False)


def _status(client) -> str:
    progress, *_ = client.predict(api_name="/training_status")
    return progress if isinstance(progress, str) else ""


def _wait_status(client, wanted, timeout=180) -> str:
    deadline = time.time() + timeout
    progress = ""
    while time.time() < deadline:
        progress = _status(client)
        if any(f"data-status='{s}'" in progress for s in wanted):
            return progress
        time.sleep(0.5)
    raise AssertionError(f"no status in {wanted}: {progress}")


def test_second_client_cannot_see_or_control_first_clients_job(multi_server):
    from gradio_client.exceptions import AppError
    url, workspace = multi_server
    a, b = _client(url), _client(url)
    a.predict(0.2, api_name="/use_example")
    a.predict(*_values(epochs=20, image_size=224, batch_size=4, augmentation="strong"), api_name="/start_training")
    _wait_status(a, ["running"])
    run_dir = next(p for p in workspace.iterdir() if p.name.startswith("run-"))
    deadline = time.time() + 60
    while not (run_dir / "config.json").is_file() and time.time() < deadline:
        time.sleep(0.5)
    assert json.loads((run_dir / "status.json").read_text())["owner"].startswith("session:")

    # B has no job: its status shows nothing of A's, and its Stop / Pause touch nothing
    assert "data-status" not in _status(b)
    b.predict(api_name="/stop_training")
    b.predict(api_name="/pause_training")
    assert "data-status='running'" in _status(a)
    a.predict(api_name="/stop_training")   # (a slow first epoch: stopped before it ends)

    # B's run list is empty; A sees its own run
    table_b = b.predict(None, [], api_name="/list_runs")[0]
    table_a = a.predict(None, [], api_name="/list_runs")[0]
    assert run_dir.name not in json.dumps(table_b), table_b
    assert run_dir.name in json.dumps(table_a), table_a
    # B cannot pick A's run (the path is known from the disk here) for testing, export, resume, curves
    for api in ("/use_run_for_test", "/use_run_for_export", "/resume_run"):
        with pytest.raises(AppError, match="not one of your runs|not in the list of choices"):
            b.predict(str(run_dir), api_name=api)
    try:
        curves = b.predict([str(run_dir)], api_name="/loss_curves")
        assert run_dir.name not in json.dumps(curves)
    except AppError as exc:   # Gradio's own check of the choices may refuse it first
        assert "not in the list of choices" in str(exc)
    with pytest.raises(AppError, match="Train a model first"):
        from gradio_client import handle_file
        b.predict(handle_file(str(REPO / "assets/example/bag/00.png")), api_name="/predict")

    # no file of the workspace is served by URL, not even to someone who knows the path
    for name in ("config.json", "status.json", "split.json"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/gradio_api/file={urllib.parse.quote(str(run_dir / name))}", timeout=10)
        assert err.value.code == 403

    _wait_status(a, ["stopped", "finished", "failed"])
    assert not (run_dir / "best").exists(), "the first epoch ended before Stop: make it slower"
    # a run stopped before its first epoch is not used for testing: it says so
    with pytest.raises(AppError, match="no trained adapter yet"):
        a.predict(handle_file(str(REPO / "assets/example/bag/00.png")), api_name="/predict")


def test_server_paths_only_for_loopback_or_data_root(multi_server, home_folders):
    from gradio_client.exceptions import AppError
    url, _ = multi_server
    _, allowed, other = home_folders
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address; test_path_gate covers the rule")
    remote = _client(url.replace("127.0.0.1", address))
    with pytest.raises(AppError, match="turned off for remote users"):
        remote.predict(str(other), 0.2, api_name="/load_path")
    summary, *_ = remote.predict(str(allowed), 0.2, api_name="/load_path")
    assert "18 images used in 3 classes" in summary, summary
    with pytest.raises(AppError, match="turned off for remote users"):   # '..' does not climb out
        remote.predict(str(allowed / ".." / ".." / "other" / "set"), 0.2, api_name="/load_path")
    with pytest.raises(AppError, match="turned off for remote users"):   # a weights file is a server path too
        remote.predict(*_values(weights="file", weights_file="/etc/hostname"), api_name="/start_training")
    local = _client(url)   # someone at this machine may type any path (the app is not shared)
    summary, *_ = local.predict(str(other), 0.2, api_name="/load_path")
    assert "18 images used in 3 classes" in summary, summary


def test_path_gate():
    """The rule itself, for machines without a second address: client host x mode x --data-root."""
    from lora_gui.ui.access import AccessPolicy
    root = Path.home()
    local, shared = AccessPolicy(multi_user=True), AccessPolicy(multi_user=True, shared=True)
    rooted = AccessPolicy(multi_user=True, data_roots=(root.resolve(),))
    assert local.may_read_path("/etc", "127.0.0.1") and local.may_read_path("/etc", "::1")
    assert not local.may_read_path("/etc", "192.0.2.7") and not local.may_read_path("/etc", None)
    assert not shared.may_read_path("/etc", "127.0.0.1")     # behind --share, 127.0.0.1 is the tunnel
    assert rooted.may_read_path(str(root / "x"), "192.0.2.7")
    assert not rooted.may_read_path(str(root / ".." / "etc"), "192.0.2.7")


@pytest.mark.parametrize("flags, says", [
    (["--workspace", "/etc/passwd"], "is a file, not a folder"),
    (["--workspace", "/proc/lora_gui_cannot_write"], "cannot be written"),
    (["--port", "99999"], "from 1 to 65535"),
    (["--port", "abc"], "whole number"),
    (["--keep-uploads-days", "-1"], "0 or more"),
    (["--data-root", "/no/such/folder"], "is not a folder"),
])
def test_bad_launch_flags_get_one_line_and_exit_2(flags, says, tmp_path):
    args = flags if "--workspace" in flags else ["--workspace", str(tmp_path / "ws"), *flags]
    proc = subprocess.run([sys.executable, str(REPO / "app.py"), *args], capture_output=True, text=True,
                          env=offline_env(), timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in proc.stderr, lines


