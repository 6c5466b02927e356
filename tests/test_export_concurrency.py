"""#13.9: exports running at the same time (the app serves several people) do not trip over each other.

Before the fix, eight native zips of one run shared one ``<name>.zip.partial`` (most failed with
FileNotFoundError), and two ONNX exports at once failed inside torch ("in_onnx_export must be False").
"""
from __future__ import annotations

import threading
import zipfile

import onnxruntime as ort
import torch
from test_export import make_adapter, rel_diff

from lora_gui.store.exports import export_adapter, export_zip


def _in_threads(n: int, work) -> list:
    """Run work(i) in n threads released together; the list holds each one's result or exception."""
    results: list = [None] * n
    gate = threading.Barrier(n)

    def run(i):
        gate.wait()
        try:
            results[i] = work(i)
        except Exception as exc:   # collected, so one failure does not hide the others
            results[i] = exc
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def test_eight_native_zips_of_one_run_into_one_folder(tmp_path):
    t = make_adapter(tmp_path, "resnet18", image_size=32)
    target = tmp_path / "downloads" / "run-native.zip"     # one name: what the Export tab writes
    results = _in_threads(8, lambda i: export_zip(t.run_dir, "native", target))
    assert [r for r in results if isinstance(r, Exception)] == []
    with zipfile.ZipFile(target) as zf:
        assert zf.testzip() is None
        assert set(zf.namelist()) == {"adapter.safetensors", "adapter.json", "labels.json",
                                      "preprocessing.json", "README.md"}
    assert [p.name for p in target.parent.iterdir()] == [target.name]     # no temporary file left


def test_two_onnx_exports_at_once_of_different_runs(tmp_path):
    runs = [make_adapter(tmp_path / f"r{i}", "resnet18", image_size=32, seed=i) for i in range(2)]
    results = _in_threads(2, lambda i: export_adapter(runs[i].run_dir, "onnx", tmp_path / f"onnx{i}"))
    assert [r for r in results if isinstance(r, Exception)] == []
    for t, file in zip(runs, results):
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": t.x.numpy()})[0])
        assert rel_diff(got, t.logits) < 1e-4
