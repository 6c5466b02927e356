"""Archives and uploads from strangers: what loads, and what is refused unharmed."""
from __future__ import annotations

import io
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from lora_gui.data.archives import ArchiveLimits, place_uploads, safe_parts
from lora_gui.data.sources import load_dataset
from lora_gui.errors import DataError

LAYOUT = [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]


def zip_folder(folder: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return dest


def snapshot(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


def assert_refused_cleanly(tmp_path: Path, workspace: Path, before: set[str]):
    """Nothing new outside the workspace, and no half-unpacked folder inside it."""
    after = snapshot(tmp_path)
    outside = {p for p in after - before if not p.startswith("ws/")}
    assert outside == set()
    leftovers = [p for p in (workspace / "datasets").iterdir()] if (workspace / "datasets").exists() else []
    assert leftovers == []


def test_zip_with_wrapping_folder_loads(tmp_path, workspace, make_image_folder):
    src = make_image_folder(LAYOUT, "pets")
    archive = zip_folder(src, tmp_path / "pets.zip", prefix="pets/")
    ds = load_dataset(archive, workspace)
    assert ds.classes == ["cat", "dog"]
    assert ds.class_counts() == {"cat": 3, "dog": 3}
    assert Path(ds.root).is_relative_to(workspace / "datasets")
    # report paths are the ones inside the archive, wrapper folder included
    assert sorted(f.path for f in ds.report.files)[0] == "pets/cat/0.png"
    # loading the same archive again reuses the unpacked folder
    assert load_dataset(archive, workspace).root == ds.root


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:gz", ".tgz")])
def test_tar_archives_load(tmp_path, workspace, make_image_folder, mode, suffix):
    src = make_image_folder(LAYOUT, "pets")
    archive = tmp_path / f"pets{suffix}"
    with tarfile.open(archive, mode) as tf:
        tf.add(src, arcname="pets")
    ds = load_dataset(archive, workspace)
    assert ds.class_counts() == {"cat": 3, "dog": 3}
    assert ds.report.errors == []


def test_csv_layout_inside_zip(tmp_path, workspace, make_image_folder):
    src = make_image_folder([f"img{i}.png" for i in range(4)], "flat")
    (src / "labels.csv").write_text("filename,label\nimg0.png,a\nimg1.png,a\nimg2.png,b\nimg3.png,b\n")
    ds = load_dataset(zip_folder(src, tmp_path / "flat.zip", prefix="flat/"), workspace)
    assert ds.class_counts() == {"a": 2, "b": 2}


def test_macos_zip_clutter_is_ignored(tmp_path, workspace, make_image_folder):
    src = make_image_folder(LAYOUT, "pets")
    archive = zip_folder(src, tmp_path / "pets.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/cat/._0.png", b"\x00\x05\x16\x07AppleDouble")
        zf.writestr("cat/.DS_Store", b"\x00\x00\x00\x01Bud1")
    ds = load_dataset(archive, workspace)
    assert len(ds.report.files) == 6
    assert all(f.status == "used" for f in ds.report.files)


@pytest.mark.parametrize("member,words", [("../evil.txt", "outside the archive"),
                                          ("cat/../../evil.txt", "outside the archive"),
                                          ("ABSOLUTE", "absolute path"),
                                          ("C:\\evil.txt", "absolute path")])
def test_zip_slip_is_refused(tmp_path, workspace, make_image_folder, member, words):
    src = make_image_folder(LAYOUT, "pets")
    archive = zip_folder(src, tmp_path / "slip.zip")
    if member == "ABSOLUTE":
        member = str(tmp_path / "abs_evil.txt")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(zipfile.ZipInfo(member), b"owned")
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=words) as err:
        load_dataset(archive, workspace)
    assert "slip.zip" in str(err.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "abs_evil.txt").exists()
    assert_refused_cleanly(tmp_path, workspace, before)


def _tar_with(tmp_path: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    archive = tmp_path / "hostile.tar"
    with tarfile.open(archive, "w") as tf:
        tf.addfile(info, io.BytesIO(data) if data else None)
        # the classic follow-up: write through the link just created
        follow = tarfile.TarInfo(info.name + "/payload.txt" if info.isdir() else info.name)
        follow.size = 5
        tf.addfile(follow, io.BytesIO(b"owned"))
    return archive


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "device", "fifo"])
def test_tar_links_and_devices_are_refused(tmp_path, workspace, kind):
    info = tarfile.TarInfo("cat/1.png")
    info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                 "device": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
    info.linkname = str(tmp_path / "target.txt")
    archive = _tar_with(tmp_path, info)
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match="link|device or special"):
        load_dataset(archive, workspace)
    assert not (tmp_path / "target.txt").exists()
    assert_refused_cleanly(tmp_path, workspace, before)


def test_tar_with_parent_path_is_refused(tmp_path, workspace):
    info = tarfile.TarInfo("../evil.txt")
    info.size = 5
    archive = tmp_path / "slip.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.addfile(info, io.BytesIO(b"owned"))
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match="outside the archive"):
        load_dataset(archive, workspace)
    assert_refused_cleanly(tmp_path, workspace, before)


ZEROS = 50 * 1024 * 1024


def _zip_of_zeros(path: Path, n_bytes: int = ZEROS, method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method, compresslevel=1) as zf:
        with zf.open("cat/zeros.png", "w") as f:
            chunk = bytes(1024 * 1024)
            for _ in range(n_bytes // len(chunk)):
                f.write(chunk)
    return path


def test_zip_bomb_by_ratio_is_refused_quickly(tmp_path, workspace):
    archive = _zip_of_zeros(tmp_path / "bomb.zip")
    before = snapshot(tmp_path)
    start = time.monotonic()
    with pytest.raises(DataError, match="compression ratio"):
        load_dataset(archive, workspace, ArchiveLimits(max_ratio=50))
    assert time.monotonic() - start < 1.0  # refused from the headers, nothing decompressed
    assert_refused_cleanly(tmp_path, workspace, before)


def test_zip_over_total_size_is_refused(tmp_path, workspace):
    archive = _zip_of_zeros(tmp_path / "big.zip", 4 * 1024 * 1024, zipfile.ZIP_STORED)
    with pytest.raises(DataError, match="unpack to"):
        load_dataset(archive, workspace, ArchiveLimits(max_total_bytes=1024 * 1024))


def test_zip_with_too_many_members_is_refused(tmp_path, workspace):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(30):
            zf.writestr(f"cat/{i}.txt", str(i))
    with pytest.raises(DataError, match="more than 20 members"):
        load_dataset(archive, workspace, ArchiveLimits(max_members=20))


def test_tar_gz_bomb_is_stopped_while_streaming(tmp_path, workspace):
    # a tar's sizes are only known while reading it, so this exercises the
    # running byte/ratio counters rather than the header checks
    archive = tmp_path / "bomb.tar.gz"
    info = tarfile.TarInfo("cat/zeros.png")
    info.size = ZEROS
    with tarfile.open(archive, "w:gz", compresslevel=1) as tf:
        tf.addfile(info, io.BytesIO(bytes(ZEROS)))
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match="compression ratio"):
        load_dataset(archive, workspace, ArchiveLimits(max_ratio=50))
    assert_refused_cleanly(tmp_path, workspace, before)
    with pytest.raises(DataError, match="a member would unpack to"):
        load_dataset(archive, workspace, ArchiveLimits(max_member_bytes=1024 * 1024))


def test_damaged_archive_says_so(tmp_path, workspace, make_image_folder):
    good = zip_folder(make_image_folder(LAYOUT, "pets"), tmp_path / "good.zip")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(good.read_bytes()[:200])  # neither a whole zip nor a tar
    with pytest.raises(DataError, match="damaged, truncated or not a zip/tar"):
        load_dataset(broken, workspace)


def test_unsupported_and_missing_sources(tmp_path, workspace):
    (tmp_path / "set.rar").write_bytes(b"Rar!\x1a\x07\x00")
    with pytest.raises(DataError, match="unsupported file type '.rar'"):
        load_dataset(tmp_path / "set.rar", workspace)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope", workspace)


def test_safe_parts():
    assert safe_parts("a/b/c.png") == ("a", "b", "c.png")
    assert safe_parts("a\\b\\c.png") == ("a", "b", "c.png")
    assert safe_parts("./a//b.png") == ("a", "b.png")
    for bad in ("../a", "a/../../b", "/etc/passwd", "\\\\server\\share", "C:/x", "a/\x00b"):
        assert safe_parts(bad) is None, bad


def test_place_uploads_refuses_unsafe_paths(tmp_path, make_image_folder):
    src = make_image_folder(["evil.png", "ok.png"], "gradio")
    dest = tmp_path / "ws" / "uploads" / "x"
    dest.mkdir(parents=True)
    not_placed = place_uploads([src / "evil.png", src / "ok.png"],
                               ["set/../../../evil.png", "set/cat/ok.png"], dest)
    assert not_placed == [("set/../../../evil.png", "unsafe path")]
    assert (dest / "set" / "cat" / "ok.png").is_file()
    assert sorted(p.name for p in tmp_path.rglob("evil.png")) == ["evil.png"]  # only the source


def test_one_uploaded_file_named_by_many_paths_is_held_to_the_archive_limits(tmp_path, workspace):
    """The relative paths come from the client: one stored file with 50,001 paths (or paths
    that would copy more bytes than an archive may unpack) is refused before anything is written."""
    from lora_gui.data.sources import dataset_from_files
    src = tmp_path / "gradio" / "x.png"
    src.parent.mkdir()
    src.write_bytes(b"\0" * 200_000)
    rels = [f"set/c{i % 2}/{i}/x.png" for i in range(50_001)]
    with pytest.raises(DataError, match="lists 50,001 files, more than the 50,000 .* drop a smaller folder"):
        dataset_from_files([str(src)], rels, workspace)
    assert not any((workspace / "uploads").iterdir()), "the half-made upload folder is removed"
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=r"holds 19 MB, more than the 10 MB this app takes in one go"):
        place_uploads([str(src)], rels[:100], dest, ArchiveLimits(max_total_bytes=10_000_000))
    assert not dest.exists() or not any(dest.rglob("*.png"))
    assert place_uploads([str(src)], rels[:40], dest, ArchiveLimits(max_total_bytes=10_000_000)) == []
    assert len(list(dest.rglob("x.png"))) == 40


def test_utf8_names_of_a_zip_without_the_utf8_flag_keep_their_accents(tmp_path, workspace, make_image_folder):
    """Info-ZIP's `zip` (Linux) and macOS write UTF-8 names without the zip's UTF-8 flag; Python
    then reads them as cp437 ("chats é" -> "chats ├⌐"), which became the class names. Built here
    byte by byte: placeholder names of the same length, swapped for UTF-8 bytes in both headers."""
    src = make_image_folder([f"chats_XX/{i}.png" for i in range(3)] + [f"birds_XXX/{i}.png" for i in range(3)], "set")
    raw = zip_folder(src, tmp_path / "linux.zip").read_bytes()
    for placeholder, real in ((b"chats_XX", "chats é".encode()), (b"birds_XXX", "鳥 birds".encode())):
        assert len(placeholder) == len(real)
        raw = raw.replace(placeholder, real)
    made = tmp_path / "linux-made.zip"
    made.write_bytes(raw)
    with zipfile.ZipFile(made) as zf:
        assert not any(i.flag_bits & 0x800 for i in zf.infolist()), "no UTF-8 flag, as Info-ZIP writes it"
        assert any("chats ├⌐" in i.filename for i in zf.infolist())   # what Python alone makes of it
    ds = load_dataset(made, workspace)
    assert ds.class_counts() == {"chats é": 3, "鳥 birds": 3}
