"""The README written beside every export, with code that runs as it is."""
from __future__ import annotations

from .adapter_file import AdapterMeta
from .merged_format import MERGED_FILE
from .onnx_format import ONNX_FILE

_PREPROCESS = """import json, timm, torch
from PIL import Image
labels = json.load(open("labels.json"))
transform = timm.data.create_transform(**json.load(open("preprocessing.json")), is_training=False)
x = transform(Image.open("photo.jpg").convert("RGB")).unsqueeze(0)   # a batch of one image"""


def _base_snippet(meta: AdapterMeta) -> str:
    """How to rebuild the exact base weights the adapter was trained on."""
    name, k, src = meta.model.name, len(meta.classes), meta.model.weights
    if src == "random":
        return (f"torch.manual_seed({meta.base_seed})  # trained on random base weights: same seed, same timm version\n"
                f"base = timm.create_model({name!r}, pretrained=False, num_classes={k})")
    if src == "hub":
        return f"base = timm.create_model({name!r}, pretrained=True, num_classes={k})"
    # bundled / file weights are not on the hub; lora_gui builds them exactly as in training
    return ("from lora_gui.config import ModelConfig\nfrom lora_gui.backbones import build_model\n"
            f"base = build_model(ModelConfig(name={name!r}, weights={src!r}, weights_file={meta.model.weights_file!r})"
            f", num_classes={k})")


def _readme(fmt: str, meta: AdapterMeta) -> str:
    """A README whose code block runs as it is, from inside the export folder."""
    name, k, dc = meta.model.name, len(meta.classes), meta.data_config
    show = "print(labels[int(logits.argmax())])"
    code = {
        "native": "from lora_gui import load_adapter\nfrom lora_gui.inference.predict import predict\n"
                  "loaded = load_adapter(\".\")   # model, classes and transform\n"
                  "print(predict(loaded, [\"photo.jpg\"], topk=5))",
        "peft": f"{_PREPROCESS}\nimport peft\n{_base_snippet(meta)}\n"
                "model = peft.PeftModel.from_pretrained(base, \".\").eval()   # .merge_and_unload(): plain timm\n"
                f"with torch.no_grad():\n    logits = model(x)\n{show}",
        "merged": f"{_PREPROCESS}\nfrom safetensors.torch import load_file\n"
                  f"model = timm.create_model({name!r}, pretrained=False, num_classes={k})\n"
                  f"model.load_state_dict(load_file(\"{MERGED_FILE}\"), strict=True)\n"
                  f"with torch.no_grad():\n    logits = model.eval()(x)\n{show}",
        "onnx": f"{_PREPROCESS}\nimport onnxruntime as ort\nsession = ort.InferenceSession(\"{ONNX_FILE}\")\n"
                f"logits = session.run(None, {{\"input\": x.numpy()}})[0]   # any batch size\n{show}",
    }[fmt]
    return (f"# {name} + LoRA, {fmt} export (lora_gui)\n\n"
            f"{k} classes, in output order, in `labels.json`: {', '.join(meta.classes[:10])}"
            f"{', ...' if k > 10 else ''}.\n"
            f"Base model: timm `{name}`, base weights: {meta.model.weights}; LoRA rank {meta.lora.rank}, "
            f"alpha {meta.lora.alpha:g}, {len(meta.layers)} layers.\n\n"
            f"Preprocessing (`preprocessing.json`, timm's data config): input size {tuple(dc.get('input_size', ()))}, "
            f"mean {tuple(dc.get('mean', ()))}, std {tuple(dc.get('std', ()))}, "
            f"interpolation {dc.get('interpolation')}, crop_pct {dc.get('crop_pct')}.\n\n"
            f"Run from this folder:\n\n```python\n{code}\n```\n")
