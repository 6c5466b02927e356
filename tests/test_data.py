"""Datasets from real image files: layouts, the report, split, decoding, transforms."""
from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_gui.data.bundled import example_dataset_path
from lora_gui.data.class_builder import ClassBuilder
from lora_gui.data.decoded_cache import DecodedCache, cache_max_side
from lora_gui.data.images import MAX_IMAGE_PIXELS, load_rgb
from lora_gui.data.sources import dataset_from_files, gallery_items, load_dataset
from lora_gui.data.split import split_counts, split_dataset
from lora_gui.data.transforms import ImageDataset, build_transform
from lora_gui.errors import DataError
from lora_gui.ui.charts import class_distribution_figure


def by_path(ds):
    paths = [f.path for f in ds.report.files]
    assert len(paths) == len(set(paths)), "each file is reported once"
    return {f.path: f for f in ds.report.files}


def two_classes(n=3):
    return [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(n)]


def test_class_folders_and_every_bad_file_reported(tmp_path, make_image_folder):
    root = make_image_folder(two_classes() + ["cat/sub/deep.jpg", "dog/small.png", "README.png"], "set")
    Image.new("RGB", (4, 4)).save(root / "dog" / "small.png")
    (root / "cat" / "notes.txt").write_text("not a picture")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good, "JPEG")
    (root / "cat" / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    png = bytearray((root / "dog" / "0.png").read_bytes())
    png[60] ^= 0xFF  # inside the pixel data: the chunk CRC no longer matches
    (root / "dog" / "corrupt.png").write_bytes(bytes(png))
    shutil.copyfile(root / "cat" / "1.png", root / "dog" / "copy.png")
    Image.new("1", (8000, 8000)).save(root / "dog" / "bomb.png")  # 64 MP in a few KB
    assert (root / "dog" / "bomb.png").stat().st_size < 100_000
    for junk in ("cat/.DS_Store", ".DS_Store", "dog/Thumbs.db", "desktop.ini", "cat/.hidden.png",
                 "__MACOSX/cat/._0.png", ".git/config"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"\x00junk")

    ds = load_dataset(root, tmp_path / "ws")
    files = by_path(ds)
    assert ds.classes == ["cat", "dog"]
    assert ds.class_counts() == {"cat": 4, "dog": 3}
    assert files["cat/sub/deep.jpg"].status == "used" and files["cat/sub/deep.jpg"].label == "cat"
    assert files["cat/notes.txt"].reason == "not an image"
    assert files["cat/truncated.jpg"].reason == "corrupt or truncated image"
    assert files["dog/corrupt.png"].reason == "corrupt or truncated image"
    assert files["dog/small.png"].reason == "image too small (4x4)"
    assert files["dog/copy.png"].reason == "duplicate of cat/1.png"
    assert files["dog/bomb.png"].reason == "too many pixels (64 MP; the limit is 40 MP)"
    assert files["README.png"].reason == "not in a class folder"
    assert not any("DS_Store" in p or "Thumbs" in p or "MACOSX" in p or "hidden" in p
                   or "desktop" in p or ".git" in p for p in files)
    assert len(files) == 14
    assert all(Path(s.path).is_absolute() and Path(s.path).is_file() for s in ds.samples)
    assert ds.report.errors == []
    assert any(w.startswith("classes with few images: 'cat' 4, 'dog' 3; 10 or more") for w in ds.report.warnings)
    text = ds.report.summary()
    assert "7 images used in 2 classes, 7 files skipped" in text and "1 duplicate" in text
    # a zero-byte picture says so (it read "not an image"), and one of each reads in the singular
    one = make_image_folder({"cat/a.png": None, "dog/b.png": None}, "one")
    (one / "dog" / "empty.jpg").write_bytes(b"")
    ds_one = load_dataset(one, tmp_path / "ws")
    assert by_path(ds_one)["dog/empty.jpg"].reason == "empty file (0 bytes)"
    assert ds_one.report.summary().startswith("2 images used in 2 classes, 1 file skipped")
    # a class folder without usable pictures is named, not silently dropped
    (one / "trouser").mkdir()
    (one / "broken").mkdir()
    (one / "broken" / "x.jpg").write_bytes(b"not a jpeg")
    assert "2 folders without usable pictures, so not classes: 'broken', 'trouser'; add pictures" in \
        load_dataset(one, tmp_path / "ws").report.summary()
    assert ds.report.as_rows()[0] == ["README.png", "", "skipped", "not in a class folder"]
    assert 8000 * 8000 > MAX_IMAGE_PIXELS


def test_links_inside_are_followed_once_links_out_are_reported(tmp_path, make_image_folder):
    # #13.7: a link never takes a scan out of the dataset folder (it could point anywhere:
    # /dev, /etc, another person's uploads); one that stays inside is followed, each folder once
    root = make_image_folder(two_classes() + ["bird_pictures/0.png", "bird_pictures/1.png"], "set")
    (root / "bird").symlink_to(root / "bird_pictures", target_is_directory=True)
    elsewhere = make_image_folder(["0.png", "1.png"], "fish_pictures")
    (root / "fish").symlink_to(elsewhere, target_is_directory=True)
    (root / "cat" / "loop").symlink_to(root, target_is_directory=True)  # must not recurse forever
    ds = load_dataset(root, tmp_path / "ws")
    assert ds.class_counts() == {"bird_pictures": 2, "cat": 3, "dog": 3}
    assert by_path(ds)["fish"].reason == "link to outside the dataset folder (not followed)"


def test_blocking_problems_are_errors(tmp_path, make_image_folder):
    one_class = load_dataset(make_image_folder(["cat/0.png", "cat/1.png"], "a"), tmp_path / "ws")
    assert any("only 1 class (cat)" in e for e in one_class.report.errors)
    with pytest.raises(DataError, match="at least 2 classes"):
        one_class.report.raise_if_blocking()
    lonely = load_dataset(make_image_folder(["cat/0.png", "cat/1.png", "dog/0.png"], "b"), tmp_path / "ws")
    assert lonely.report.errors == ["class 'dog' has only 1 usable image; each class needs at least 2 "
                                    "(one to train on, one to check against): add more"]
    empty = load_dataset(make_image_folder([], "c"), tmp_path / "ws")
    assert "no usable images" in empty.report.errors[0]
    with pytest.raises(DataError, match="no usable images"):
        empty.report.raise_if_blocking()


def test_imbalance_warning(tmp_path, make_image_folder):
    layout = [f"big/{i}.png" for i in range(12)] + ["small/0.png", "small/1.png"]
    ds = load_dataset(make_image_folder(layout, "s"), tmp_path / "ws")
    assert ds.report.errors == []
    assert any("imbalanced" in w and "'big' has 12" in w for w in ds.report.warnings)


def test_a_csv_saved_with_semicolons_or_tabs_is_read(tmp_path, make_image_folder):
    """Spreadsheets in many locales save CSV with ';' between columns; the header decides."""
    root = make_image_folder([f"img{i}.png" for i in range(4)], "semi")
    for sep in (";", "\t"):
        rows = ["filename", "label"], ["img0.png", "shoe"], ["img1.png", "shoe"], ["img2.png", "bag"], \
               ["img3.png", "bag"], ["", "bag"]
        (root / "labels.csv").write_text("\n".join(sep.join(r) for r in rows) + "\n")
        ds = load_dataset(root, tmp_path / "ws")
        assert ds.class_counts() == {"bag": 2, "shoe": 2}, sep
        assert by_path(ds)["labels.csv, a line with label 'bag'"].reason == "no file name in CSV"


def test_csv_layout(tmp_path, make_image_folder):
    root = make_image_folder([f"img{i}.png" for i in range(5)] + ["stray.png"], "flat")
    (root / "labels.csv").write_text("Image,Class\nimg0.png,shoe\nimg1.png,shoe\nimg2.png,bag\n"
                                     "img3.png,bag\nimg4.png,\ngone.png,bag\n../../etc/passwd,bag\n")
    ds = load_dataset(root, tmp_path / "ws")
    files = by_path(ds)
    assert ds.class_counts() == {"bag": 2, "shoe": 2}
    assert files["gone.png"].reason == "listed in CSV but missing"
    assert files["img4.png"].reason == "no label in CSV"
    assert files["stray.png"].reason == "not listed in CSV"
    assert files["../../etc/passwd"].reason == "unsafe path in CSV"
    # the CSV itself as the source: only what it lists is considered
    direct = load_dataset(root / "labels.csv", tmp_path / "ws")
    assert direct.class_counts() == ds.class_counts() and "stray.png" not in by_path(direct)
    (root / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="header row"):
        load_dataset(root / "bad.csv", tmp_path / "ws")


def test_train_val_layout_is_used_as_given(tmp_path, make_image_folder):
    layout = [f"{s}/{c}/{i}.png" for s in ("train", "val") for c in ("cat", "dog") for i in range(2)]
    root = make_image_folder(layout + ["test/cat/9.png", "notes.png"], "split")
    shutil.copyfile(root / "train" / "dog" / "0.png", root / "val" / "dog" / "leak.png")
    ds = load_dataset(root, tmp_path / "ws")
    files = by_path(ds)
    assert ds.classes == ["cat", "dog"] and ds.given_split is not None
    assert files["val/dog/leak.png"].reason == "duplicate of train/dog/0.png"
    assert files["test/cat/9.png"].reason == "not in train/ or val/"
    train, val = split_dataset(ds, 0.5, seed=1)
    assert len(train) == 4 and len(val) == 4
    assert all("/val/" in s.path for s in val)
    assert split_counts(train, val, ds.classes) == [["cat", 2, 2], ["dog", 2, 2]]


def test_stratified_split(tmp_path, make_image_folder):
    layout = [f"a/{i}.png" for i in range(10)] + ["b/0.png", "b/1.png"] + [f"c/{i}.png" for i in range(5)]
    ds = load_dataset(make_image_folder(layout, "s"), tmp_path / "ws")
    train, val = split_dataset(ds, 0.2, seed=7)
    assert split_counts(train, val, ds.classes) == [["a", 8, 2], ["b", 1, 1], ["c", 4, 1]]
    again = split_dataset(ds, 0.2, seed=7)
    assert [s.path for s in again[1]] == [s.path for s in val]
    others = {tuple(s.path for s in split_dataset(ds, 0.2, seed=k)[1]) for k in range(5)}
    assert len(others) > 1  # the seed matters
    assert {s.path for s in train} | {s.path for s in val} == {s.path for s in ds.samples}
    assert split_dataset(ds, 0.0, seed=7)[1] == []


def _jpeg_with_orientation(path: Path, orientation: int) -> None:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, "JPEG", exif=exif, quality=95)


def test_load_rgb_modes_orientation_and_gif(tmp_path):
    _jpeg_with_orientation(tmp_path / "rot.jpg", 6)
    im = load_rgb(tmp_path / "rot.jpg")
    assert im.size == (20, 40)  # rotated upright
    top, bottom = im.getpixel((10, 5)), im.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60

    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 255, 0, 255))
    rgba.save(tmp_path / "rgba.png")
    out = load_rgb(tmp_path / "rgba.png")
    assert out.mode == "RGB" and out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 255, 0)
    Image.new("L", (10, 10), 77).save(tmp_path / "gray.png")
    assert load_rgb(tmp_path / "gray.png").getpixel((1, 1)) == (77, 77, 77)
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30])
    pal.save(tmp_path / "pal.bmp")
    assert load_rgb(tmp_path / "pal.bmp").getpixel((0, 0)) == (10, 20, 30)
    Image.fromarray(np.full((10, 10), 40000, np.uint16)).save(tmp_path / "deep.tif")
    assert load_rgb(tmp_path / "deep.tif").getpixel((0, 0)) == (156, 156, 156)  # scaled, not clipped
    Image.new("RGB", (10, 10), (9, 99, 199)).save(tmp_path / "x.webp", lossless=True)
    assert load_rgb(tmp_path / "x.webp").getpixel((0, 0)) == (9, 99, 199)

    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert load_rgb(tmp_path / "anim.gif").getpixel((6, 6)) == (255, 0, 0)

    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="not an image"):
        load_rgb(tmp_path / "x.txt")
    Image.new("1", (8000, 8000)).save(tmp_path / "bomb.png")
    with pytest.raises(DataError, match="too many pixels"):
        load_rgb(tmp_path / "bomb.png")
    big = Image.new("RGB", (300, 100))
    big.save(tmp_path / "big.jpg")
    assert load_rgb(tmp_path / "big.jpg", max_side=50).size == (150, 50)


def test_formats_in_a_dataset(tmp_path, make_image_folder):
    root = make_image_folder(["a/0.png", "a/1.jpg", "a/2.bmp", "a/3.tif", "a/4.gif", "a/5.webp",
                              "b/0.jpeg", "b/1.png"], "fmt")
    ds = load_dataset(root, tmp_path / "ws")
    assert ds.class_counts() == {"a": 6, "b": 2}
    (root / "a" / "6.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    assert "unsupported image format (.heic)" in by_path(load_dataset(root, tmp_path / "ws"))["a/6.heic"].reason


def test_class_builder(tmp_path, make_image_folder):
    src = make_image_folder(["x0.png", "x1.png", "x2.jpg"], "drops")
    (src / "notes.txt").write_text("nope")
    cb = ClassBuilder(tmp_path / "ws", "sess-1")
    cb.add_class("cat")
    cb.add_class("Dog")
    for bad in ("", "a/b", "..", ".hidden", "CAT"):
        with pytest.raises(DataError):
            cb.add_class(bad)
    added = cb.add_images("cat", [src / "x0.png", src / "x1.png", src / "notes.txt"])
    assert added.added == 2 and added.skipped == [("notes.txt", "not an image")]  # #13.12: said, not dropped
    assert "1 left out: notes.txt (not an image)" in added.summary()
    assert cb.add_images("cat", [src / "x0.png"]).added == 0  # same picture: stored once
    cb.add_image_array("Dog", np.random.default_rng(1).integers(0, 255, (24, 32, 3), np.uint8))
    cb.add_image_array("Dog", np.random.default_rng(2).random((24, 32)))  # float frame
    assert cb.add_images("Dog", [Image.new("RGBA", (20, 20), (1, 2, 3, 255))]).added == 1
    with pytest.raises(DataError, match="too small"):
        cb.add_image_array("Dog", np.zeros((4, 4, 3), np.uint8))
    assert cb.classes() == {"Dog": 3, "cat": 2}
    cb.rename_class("Dog", "dog")
    with pytest.raises(DataError, match="already exists"):
        cb.rename_class("dog", "Cat")
    cb.add_class("bird")
    cb.delete_class("bird")
    again = ClassBuilder(tmp_path / "ws", "sess-1")  # state lives on disk
    assert again.classes() == {"cat": 2, "dog": 3}
    ds = again.dataset()
    assert ds.classes == ["cat", "dog"] and ds.report.errors == []
    assert Path(ds.root) == tmp_path / "ws" / "classes" / "sess-1"
    with pytest.raises(DataError):
        ClassBuilder(tmp_path / "ws", "../escape")


def test_dataset_from_files_rebuilds_folders(tmp_path, make_image_folder):
    # Gradio's cache: one hashed folder per file, base name kept
    names = two_classes()
    gradio = make_image_folder({f"{i:02d}hash/{Path(n).name}": None for i, n in enumerate(names)}, "gradio")
    files = sorted(gradio.glob("*/*.png"))
    rels = [f"myset/{n}" for n in names]
    ds = dataset_from_files([str(f) for f in files], rels, tmp_path / "ws")
    assert ds.class_counts() == {"cat": 3, "dog": 3}
    assert "myset/cat/0.png" in by_path(ds)
    assert Path(ds.root).is_relative_to(tmp_path / "ws" / "uploads")

    # byte-identical cat/0.png and dog/0.png: Gradio hands over one file for both
    shutil.copyfile(files[0], files[3])
    merged = [f for i, f in enumerate(files) if i != 3]
    ds = dataset_from_files([str(f) for f in merged], rels + ["myset/dog/missing.png"], tmp_path / "ws")
    files_report = by_path(ds)
    assert files_report["myset/dog/0.png"].reason == "duplicate of myset/cat/0.png"
    assert files_report["myset/dog/missing.png"].reason == "not received from the browser"
    assert any("could not be put back" in w for w in ds.report.warnings)


def test_decoded_cache(tmp_path, make_image_folder):
    root = make_image_folder({"a/0.png": (40, 20), "a/1.png": (40, 20), "a/2.png": (40, 20)}, "c")
    paths = [str(p) for p in sorted((root / "a").glob("*.png"))]
    cache = DecodedCache(max_bytes=10**6, max_side=10)
    first = cache.get(paths[0])
    assert first.size == (20, 10) and first.mode == "RGB"
    assert cache.get(paths[0]) is first
    assert (cache.hits, cache.misses, cache.bytes) == (1, 1, 20 * 10 * 3)
    small = DecodedCache(max_bytes=20 * 10 * 3 * 2, max_side=10)  # room for two
    for p in paths:
        small.get(p)
    assert len(small) == 2 and small.bytes <= small.max_bytes
    small.get(paths[0])  # evicted (least recently used), decoded again
    assert small.misses == 4
    clone = pickle.loads(pickle.dumps(small))  # DataLoader workers under "spawn"
    assert len(clone) == 0 and clone.get(paths[1]).size == (20, 10)
    assert cache_max_side({"input_size": (3, 224, 224), "crop_pct": 0.875}) == 295  # ceil(ceil(224 / 0.875) * 1.15)


DATA_CONFIG = {"input_size": (3, 96, 96), "interpolation": "bicubic", "mean": (0.5, 0.4, 0.3),
               "std": (0.2, 0.2, 0.2), "crop_pct": 0.9, "crop_mode": "center"}


@pytest.mark.parametrize("augmentation", ["none", "light", "strong"])
@pytest.mark.parametrize("training", [True, False])
def test_build_transform_follows_data_config(tmp_path, augmentation, training):
    tf = build_transform(DATA_CONFIG, augmentation, training)
    out = tf(Image.new("RGB", (150, 120), (128, 128, 128)))
    assert out.shape == (3, 96, 96) and out.dtype == torch.float32
    if not training or augmentation == "none":
        expected = torch.tensor([(128 / 255 - m) / 0.2 for m in DATA_CONFIG["mean"]])
        assert torch.allclose(out[:, 48, 48], expected, atol=1e-3)


def test_image_dataset_and_example(tmp_path):
    ds = load_dataset(example_dataset_path(), tmp_path / "ws")
    assert ds.report.errors == [] and ds.report.warnings == []
    assert ds.classes == ["bag", "sneaker", "t-shirt", "trouser"]
    assert set(ds.class_counts().values()) == {30}
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").iterdir())  # a folder: no copy
    train, val = split_dataset(ds, 0.2, seed=0)
    cache = DecodedCache(10**7, cache_max_side(DATA_CONFIG))
    images = ImageDataset(val, build_transform(DATA_CONFIG, "light", training=True), cache)
    x, y = images[0]
    assert x.shape == (3, 96, 96) and y == val[0].label and len(images) == 24
    assert images[0][0].shape == (3, 96, 96) and cache.hits == 1
    fig = class_distribution_figure(ds.class_counts())
    assert list(fig.layout.xaxis.ticktext) == ds.classes and list(fig.data[0].y) == [30] * 4
    stacked = class_distribution_figure(split_counts(train, val, ds.classes))
    assert [t.name for t in stacked.data] == ["train", "validation"]
    items = gallery_items(ds, per_class=2)
    assert len(items) == 8 and items[0][1] == "bag" and Path(items[0][0]).is_file()


def test_class_names_with_markup_are_kept_exactly(tmp_path, make_image_folder):
    # #13.12: escaping is the UI's job; the engine keeps the name as the person wrote it
    name = '<img src=x onerror=alert(1)> & "cats"'
    root = make_image_folder([f"{name}/{i}.png" for i in range(2)] + ["dog/0.png", "dog/1.png"], "markup")
    assert load_dataset(root, tmp_path / "ws").classes == [name, "dog"]
    cb = ClassBuilder(tmp_path / "ws", "sess-markup")
    cb.add_class("<b>bold<b> & 'x'")  # a / would be a folder separator, so it is refused
    assert list(cb.classes()) == ["<b>bold<b> & 'x'"]
