"""The curated list of backbones the app offers first, and search over all of timm.

The list itself is plain data (no torch or timm), so the app lays out its Model tab and the
command line parses its flags before the engine is loaded; the facts that need timm
(``search_models`` here, ``build.model_info``) import it when called.
"""
from __future__ import annotations

from dataclasses import dataclass

# The offline default: real ImageNet weights ship with lora_gui (see ``weights``).
BUNDLED_MODEL = "tf_efficientnet_lite0"


@dataclass
class CatalogEntry:
    name: str
    note: str


# Fast-on-CPU first. Parameter counts and resolutions are read from timm, not typed here.
CATALOG = [
    CatalogEntry("tf_efficientnet_lite0", "EfficientNet-Lite0, bundled ImageNet weights, works offline"),
    CatalogEntry("mobilenetv3_small_100", "MobileNetV3-Small, very fast on CPU"),
    CatalogEntry("mobilenetv4_conv_small", "MobileNetV4 conv small, fast on CPU"),
    CatalogEntry("resnet18", "ResNet-18, a classic CNN"),
    CatalogEntry("regnetx_004", "RegNetX-400MF, small CNN"),
    CatalogEntry("vit_tiny_patch16_224", "ViT-Tiny, smallest vision transformer"),
    CatalogEntry("deit_tiny_patch16_224", "DeiT-Tiny, data-efficient ViT"),
    CatalogEntry("convnext_atto", "ConvNeXt-Atto, modern CNN"),
    CatalogEntry("efficientnet_b0", "EfficientNet-B0"),
    CatalogEntry("levit_128s", "LeViT-128S, fast hybrid transformer"),
    CatalogEntry("swin_tiny_patch4_window7_224", "Swin-Tiny, larger: slow on CPU"),
    CatalogEntry("eva02_tiny_patch14_224", "EVA-02 Tiny"),
]


def search_models(query: str, limit: int = 50) -> list[str]:
    import timm
    query = query.strip()
    pattern = query if any(c in query for c in "*?") else f"*{query}*"
    return timm.list_models(pattern)[:limit]
