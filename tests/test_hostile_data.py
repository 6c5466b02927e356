"""Datasets that would hang or exhaust a scan (#13.7, #13.12): FIFOs, links to devices or out
of the folder, /dev itself, a CSV listing a file twice, hidden class folders, and a time limit."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from lora_gui.data.archives import ArchiveLimits, extract_archive
from lora_gui.data.sources import load_dataset
from lora_gui.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _load_within(seconds, *args, **kwargs):
    """load_dataset in a thread: a scan that blocks fails the test instead of hanging it."""
    out = {}

    def run():
        try:
            out["ds"] = load_dataset(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out["exc"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the scan did not end within {seconds} s"
    if "exc" in out:
        raise out["exc"]
    return out["ds"]


def _files(ds):
    paths = [f.path for f in ds.report.files]
    assert len(paths) == len(set(paths)), "each file is reported once"
    return {f.path: f for f in ds.report.files}


@pytest.fixture
def hostile(tmp_path, make_image_folder):
    root = make_image_folder([f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
                             + [".secret/0.png", ".secret/1.png"], "hostile")
    os.mkfifo(root / "cat" / "pipe.png")
    (root / "dog" / "zero.png").symlink_to("/dev/zero")
    (root / "dog" / "passwd.png").symlink_to("/etc/passwd")
    (root / "devices").symlink_to("/dev", target_is_directory=True)
    return root


def test_fifos_devices_and_links_out_are_reported_not_opened(hostile, tmp_path):
    ds = _load_within(60, hostile, tmp_path / "ws")
    files = _files(ds)
    assert ds.class_counts() == {"cat": 3, "dog": 3}
    assert files["cat/pipe.png"].reason == "not a regular file (FIFO)"
    assert files["dog/zero.png"].reason == "link to outside the dataset folder (not followed)"
    assert files["dog/passwd.png"].reason == "link to outside the dataset folder (not followed)"
    assert files["devices"].reason == "link to outside the dataset folder (not followed)"
    assert files[".secret"].reason == "hidden folder (its name starts with a dot); rename it to use its images"
    assert not any(p.startswith(".secret/") for p in files)
    assert "not a regular file" in ds.report.summary()


def test_a_csv_or_archive_that_is_a_fifo_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "labels.csv")
    with pytest.raises(DataError, match=r"not a regular file \(FIFO\)"):
        _load_within(30, tmp_path / "labels.csv", tmp_path / "ws")
    os.mkfifo(tmp_path / "set.zip")
    with pytest.raises(DataError, match=r"not a regular file \(FIFO\)"):
        _load_within(30, tmp_path / "set.zip", tmp_path / "ws")


def test_a_csv_listing_a_file_twice_shows_it_once(make_image_folder, tmp_path):
    root = make_image_folder([f"{i}.png" for i in range(6)], "flat")
    rows = ["filename,label"] + [f"{i}.png,{'cat' if i < 3 else 'dog'}" for i in range(6)]
    rows += ["0.png,cat", "5.png,cat"]  # 0.png again (same label), 5.png again with another label
    os.mkfifo(root / "pipe.png")
    rows += ["pipe.png,dog"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = _load_within(60, root, tmp_path / "ws")
    files = _files(ds)
    assert files["0.png"].status == "used"
    assert files["5.png"].status == "skipped"
    assert files["5.png"].reason == "listed 2 times in CSV with different labels (dog, cat)"
    assert files["pipe.png"].reason == "not a regular file (FIFO)"


def test_a_scan_past_its_time_limit_stops_with_how_far_it_got(make_image_folder, tmp_path):
    root = make_image_folder([f"c{c}/{i}.png" for c in range(2) for i in range(20)], "many")
    with pytest.raises(DataError, match=r"took longer than 0 s \(\d+ files scanned so far\).*smaller folder"):
        load_dataset(root, tmp_path / "ws", scan_seconds=0)
    assert load_dataset(root, tmp_path / "ws").class_counts() == {"c0": 20, "c1": 20}


@pytest.mark.parametrize("target", ["hostile", "/dev"])
def test_check_data_cli_ends_on_hostile_folders(hostile, tmp_path, target):
    data = hostile if target == "hostile" else target
    out = subprocess.run([sys.executable, "-m", "lora_gui", "check-data", str(data), "--workspace",
                          str(tmp_path / "ws"), "--verbose"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    if target == "hostile":
        assert out.returncode == 0, out.stderr
        assert "cat/pipe.png |  | skipped | not a regular file (FIFO)" in out.stdout
    else:  # nothing there is an image: a clear 'no usable images', not a hang
        assert out.returncode == 2 and "no usable images" in out.stdout + out.stderr


def test_link_and_zip_slip_refusals_do_not_advise_bigger_limits(tmp_path):
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as zf:
        zf.writestr("../evil.png", b"x")
    with pytest.raises(DataError) as info:
        extract_archive(slip, tmp_path / "ws")
    assert "outside the archive" in str(info.value) and "raise the archive limits" not in str(info.value)
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        member = zipfile.ZipInfo("cat/0.png")
        member.external_attr = 0o120777 << 16  # a symlink
        zf.writestr(member, "/etc/passwd")
    with pytest.raises(DataError) as info:
        extract_archive(link, tmp_path / "ws")
    assert "is a link" in str(info.value) and "raise the archive limits" not in str(info.value)
    with pytest.raises(DataError, match="raise the archive limits"):  # a true size refusal still does
        extract_archive(slip.with_name("big.zip") if _big(tmp_path) else None, tmp_path / "ws",
                        ArchiveLimits(max_member_bytes=10))
    assert not list((tmp_path / "ws" / "datasets").glob(".partial-*"))


def _big(tmp_path) -> bool:
    with zipfile.ZipFile(tmp_path / "big.zip", "w") as zf:
        zf.writestr("cat/0.png", b"x" * 100)
    return True


def test_a_csv_label_that_is_a_path_is_skipped_and_never_becomes_a_folder(make_image_folder, tmp_path):
    """A class name is a folder name later (the Demo tab's corrections, the class builder): a CSV
    label like "../../x" or "/etc/x" is left out with the reason, the other rows are used."""
    root = make_image_folder([f"{i}.png" for i in range(8)], "flat")
    labels = ["cat", "cat", "dog", "dog", "../../../escaped", "/tmp/abs", ".hidden", "a\\b"]
    rows = ["filename,label"] + [f"{i}.png,{label}" for i, label in enumerate(labels)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = _load_within(60, root, tmp_path / "ws")
    files = _files(ds)
    assert ds.class_counts() == {"cat": 2, "dog": 2}
    assert files["4.png"].status == "skipped"
    assert files["4.png"].reason == "label '../../../escaped' in CSV starts with a dot: rename that class in the CSV"
    assert "holds / or \\" in files["5.png"].reason and "holds / or \\" in files["7.png"].reason
    assert files["6.png"].reason.startswith("label '.hidden' in CSV starts with a dot")


def test_a_correction_is_never_written_outside_the_runs_corrections_folder(tmp_path):
    from PIL import Image

    from lora_gui.data.corrections import add_fix, fixes_dir
    picture = Image.new("RGB", (20, 20), "red")
    ws = tmp_path / "ws"
    for bad in ("../../../outside", "/tmp/abs-class", "..", ""):
        with pytest.raises(DataError, match="cannot be used as a folder name"):
            add_fix(ws, "run-1", ["cat", bad], bad, picture)
    assert not (tmp_path / "outside").exists() and not Path("/tmp/abs-class").exists()
    path, new = add_fix(ws, "run-1", ["cat", "dog"], "dog", picture)
    assert new and path.parent == fixes_dir(ws, "run-1") / "dog"
