"""The README written beside every export, with code that runs as it is."""
from __future__ import annotations

from ..backbones.build import size_kwargs
from .adapter_file import AdapterMeta
from .coreml_format import COREML_FILE
from .merged_format import MERGED_FILE
from .onnx_format import ONNX_FILE
from .onnx_int8_format import INT8_FILE
from .openvino_format import OPENVINO_FILE
from .parity import parity_markdown
from .peft_format import BASE_WEIGHTS
from .tflite_format import TFLITE_FILE

# The picture is read as the app reads it: a phone photo upright by its EXIF orientation (without it,
# a rotated trouser read as a hand bag), transparency over white.
_PREPROCESS = """import json, timm, torch
from PIL import Image, ImageOps
labels = json.load(open("labels.json"))
transform = timm.data.create_transform(**json.load(open("preprocessing.json")), is_training=False)

def read_rgb(path):   # as lora_gui reads a picture: upright (EXIF), transparency over white
    im = ImageOps.exif_transpose(Image.open(path))
    if im.mode in ("RGBA", "LA", "P"):
        im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
    return im.convert("RGB")

x = transform(read_rgb("photo.jpg")).unsqueeze(0)   # a batch of one image"""


def _size_arg(meta: AdapterMeta) -> str:
    """``, img_size=N`` for a fixed-size model (ViT ...) trained at a set resolution: without it timm
    builds position embeddings for the model's own size, and loading the weights fails."""
    return "".join(f", {k}={v!r}" for k, v in size_kwargs(meta.model.name, meta.model.image_size).items())


def _base_snippet(meta: AdapterMeta) -> str:
    """How to rebuild the exact base weights the adapter was trained on, with timm alone."""
    name, k, size = meta.model.name, len(meta.classes), _size_arg(meta)
    if meta.model.weights == "hub":   # timm resamples the pretrained position embeddings to img_size
        return f"base = timm.create_model({name!r}, pretrained=True, num_classes={k}{size})"
    # bundled, local-file and random base weights are on no hub: the export carries them
    return (f"base = timm.create_model({name!r}, pretrained=False, num_classes={k}{size})\n"
            f"base.load_state_dict(load_file(\"{BASE_WEIGHTS}\"), strict=True)   # the base it was trained on")


def _code(fmt: str, meta: AdapterMeta) -> str:
    name, k = meta.model.name, len(meta.classes)
    show = "print(labels[int(logits.argmax())])"
    onnx = (f"{_PREPROCESS}\nimport onnxruntime as ort\nsession = ort.InferenceSession(\"{{file}}\")\n"
            f"logits = session.run(None, {{{{\"input\": x.numpy()}}}})[0]   # any batch size\n{show}")
    return {
        "native": "from lora_gui import load_adapter\nfrom lora_gui.inference.predict import predict\n"
                  "loaded = load_adapter(\".\")   # model, classes and transform\n"
                  "print(predict(loaded, [\"photo.jpg\"], topk=1)[0][0][0])",
        "peft": f"{_PREPROCESS}\nimport peft\nfrom safetensors.torch import load_file\n{_base_snippet(meta)}\n"
                "model = peft.PeftModel.from_pretrained(base, \".\").eval()   # .merge_and_unload(): plain timm\n"
                f"with torch.no_grad():\n    logits = model(x)\n{show}",
        "merged": f"{_PREPROCESS}\nfrom safetensors.torch import load_file\n"
                  f"model = timm.create_model({name!r}, pretrained=False, num_classes={k}{_size_arg(meta)})\n"
                  f"model.load_state_dict(load_file(\"{MERGED_FILE}\"), strict=True)\n"
                  f"with torch.no_grad():\n    logits = model.eval()(x)\n{show}",
        "onnx": onnx.format(file=ONNX_FILE),
        "onnx_int8": onnx.format(file=INT8_FILE),
        "openvino": f"{_PREPROCESS}\nimport openvino as ov\n"
                    f"model = ov.Core().compile_model(\"{OPENVINO_FILE}\", \"CPU\")   # or \"GPU\", \"NPU\", \"AUTO\"\n"
                    f"logits = model(x.numpy())[0]\n{show}",
        "coreml": f"{_PREPROCESS}\nimport coremltools as ct   # predictions need macOS; elsewhere use skip_model_load=True\n"
                  f"model = ct.models.MLModel(\"{COREML_FILE}\")\n"
                  "print(model.predict({\"input\": x.numpy()})[\"classLabel\"])",
        "tflite": f"{_PREPROCESS}\nfrom ai_edge_litert.interpreter import Interpreter\n"
                  f"interpreter = Interpreter(model_path=\"{TFLITE_FILE}\"); interpreter.allocate_tensors()\n"
                  "interpreter.set_tensor(interpreter.get_input_details()[0][\"index\"], x.numpy())   # one image, NCHW\n"
                  "interpreter.invoke()\n"
                  "logits = interpreter.get_tensor(interpreter.get_output_details()[0][\"index\"])\n"
                  f"{show}",
    }[fmt]


NOTES = {
    "native": "Needs lora_gui itself (`pip install` this package).",
    "peft": "Needs timm, peft and safetensors (not lora_gui).",
    "merged": "Needs timm and safetensors only.",
    "onnx": "Needs onnxruntime (plus timm + Pillow for the preprocessing shown).",
    "onnx_int8": "int8 weights and activations (onnxruntime static quantisation, weights per channel, calibrated "
                 "on the run's training images): about 4x smaller and faster on CPUs; needs onnxruntime.",
    "openvino": "OpenVINO IR (`model.xml` + `model.bin`, float16 weights) for Intel CPUs, GPUs and NPUs; "
                "needs `pip install openvino`.",
    "coreml": "Core ML ML Program for iOS 15+ / macOS 12+ apps (Xcode: drag in `model.mlpackage`). The input is "
              "the normalised tensor; outputs `classLabel` and `classLabel_probs`. Converted on Linux, where "
              "Core ML cannot run, so it carries no parity report.",
    "tflite": "LiteRT (TFLite) flatbuffer for Android / edge devices; one NCHW image per call; needs "
              "`pip install ai-edge-litert`.",
}


def _readme(fmt: str, meta: AdapterMeta, parity: dict | None = None) -> str:
    """A README whose code block runs as it is, from inside the export folder."""
    name, k, dc = meta.model.name, len(meta.classes), meta.data_config
    check = f"\n{parity_markdown(parity)}\n" if parity is not None else ""
    return (f"# {name} + LoRA, {fmt} export (lora_gui)\n\n"
            f"{k} classes, in output order, in `labels.json`: {', '.join(meta.classes[:10])}"
            f"{', ...' if k > 10 else ''}.\n"
            f"Base model: timm `{name}`, base weights: {meta.model.weights}; LoRA rank {meta.lora.rank}, "
            f"alpha {meta.lora.alpha:g}, {len(meta.layers)} layers.\n\n"
            f"Preprocessing (`preprocessing.json`, timm's data config): input size {tuple(dc.get('input_size', ()))}, "
            f"mean {tuple(dc.get('mean', ()))}, std {tuple(dc.get('std', ()))}, "
            f"interpolation {dc.get('interpolation')}, crop_pct {dc.get('crop_pct')}.\n\n"
            f"{NOTES[fmt]}\n{check}\n"
            f"Run from this folder:\n\n```python\n{_code(fmt, meta)}\n```\n")
