"""Model building (lora_gui/backbones/): bundled offline weights, local files, the hub, random init.

No network and no downloads: hub tests point the Hugging Face cache at an empty folder
and either set HF_HUB_OFFLINE or rely on this machine having no route to the hub.
"""
from __future__ import annotations

import pickle
import time
import warnings

import pytest
import skimage.data
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import lora_gui.backbones.catalog as catalog
import lora_gui.backbones.hub as hub
from lora_gui.backbones.build import build_model, check_model_available, data_config
from lora_gui.backbones.build import model_info
from lora_gui.backbones.hub import weights_availability
from lora_gui.backbones.weights import (
    BUNDLED_MODEL,
    bundled_weights_path,
    load_weights_file,
    lukemelas_to_timm,
)
from lora_gui.config import ModelConfig
from lora_gui.errors import ModelError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so weights someone cached on this machine change nothing."""
    import huggingface_hub.constants as hf_constants
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def no_download(monkeypatch):
    """If the hub turns out to be reachable, skip instead of downloading weights."""
    real = timm.create_model

    def guarded(name, *args, **kwargs):
        if kwargs.get("pretrained"):
            pytest.skip("the hub is reachable from this machine; this test never downloads")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(timm, "create_model", guarded)


def small(name="resnet18", **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw)


# --------------------------------------------------------------------------- #
# Bundled EfficientNet-Lite0
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def bundled_state():
    return torch.load(bundled_weights_path(), map_location="cpu", weights_only=True)


def test_bundled_weights_map_exactly_onto_tf_efficientnet_lite0(bundled_state):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = lukemelas_to_timm(bundled_state, model)
    assert len(mapped) == len(bundled_state)  # one-to-one: nothing dropped, nothing merged
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(mapped) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert v.shape == mapped[k].shape, k
    # values really come from the file (not left at init)
    assert torch.equal(model.conv_stem.weight, bundled_state["_conv_stem.weight"])
    assert torch.equal(model.classifier.weight, bundled_state["_fc.weight"])


def test_default_model_config_is_the_bundled_backbone():
    assert BUNDLED_MODEL == "tf_efficientnet_lite0"  # not efficientnet_lite0: other padding / BN eps
    assert ModelConfig().name == BUNDLED_MODEL and ModelConfig().weights == "bundled"


@pytest.fixture(scope="module")
def imagenet_model():
    return build_model(ModelConfig(), num_classes=1000).eval()


@pytest.mark.parametrize("photo,classes", [("coffee", {967}),             # espresso
                                           ("chelsea", set(range(281, 286)))])  # tabby/tiger/Persian/... cat
def test_bundled_model_classifies_real_photos(imagenet_model, photo, classes):
    cfg = data_config(imagenet_model)
    assert cfg == timm.data.resolve_model_data_config(imagenet_model)
    transform = timm.data.create_transform(**cfg)  # timm's own eval transform: no hard-coded size/mean/std
    image = Image.fromarray(getattr(skimage.data, photo)())
    x = transform(image)
    assert tuple(x.shape) == tuple(cfg["input_size"])
    with torch.no_grad():
        probs = imagenet_model(x[None]).softmax(-1)[0]
    top1 = int(probs.argmax())
    assert top1 in classes, f"{photo}: top-1 class {top1}"
    if photo == "coffee":
        assert probs[967] > 0.5


def test_build_bundled_with_n_classes_keeps_backbone(bundled_state):
    model = build_model(ModelConfig(), num_classes=3)
    assert model.classifier.out_features == 3
    assert model.num_classes == 3
    assert torch.equal(model.conv_stem.weight, bundled_state["_conv_stem.weight"])
    assert torch.equal(model.conv_head.weight, bundled_state["_conv_head.weight"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, bundled_state["_blocks.15._project_conv.weight"])
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_bundled_weights_only_for_bundled_model():
    with pytest.raises(ModelError, match="bundled weights exist only for tf_efficientnet_lite0"):
        build_model(ModelConfig(name="resnet18", weights="bundled"), 3)


def test_too_few_classes():
    with pytest.raises(ModelError, match="at least 2 classes"):
        build_model(ModelConfig(), 1)


# --------------------------------------------------------------------------- #
# Hub weights without a network
# --------------------------------------------------------------------------- #

def _assert_helpful(msg: str, name: str):
    assert name in msg
    assert BUNDLED_MODEL in msg and "bundled" in msg
    assert "local" in msg and "file" in msg
    assert "Traceback" not in msg


def test_hub_offline_env_fails_fast_with_a_helpful_message(monkeypatch, empty_hub_cache, no_download):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        build_model(ModelConfig(name="resnet18", weights="hub"), 4)
    assert time.monotonic() - start < 3
    _assert_helpful(str(info.value), "resnet18")
    assert "HF_HUB_OFFLINE" in str(info.value)
    with pytest.raises(ModelError, match="resnet18"):
        check_model_available(ModelConfig(name="resnet18", weights="hub"))
    assert weights_availability("resnet18") == "needs network"


def test_hub_really_unreachable_fails_within_seconds(monkeypatch, empty_hub_cache, no_download):
    """The real path: no HF_HUB_OFFLINE, the socket probe runs (this machine has no route)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        build_model(ModelConfig(name="vit_tiny_patch16_224", weights="hub"), 4)
    assert time.monotonic() - start < 10
    _assert_helpful(str(info.value), "vit_tiny_patch16_224")


def test_hub_fails_fast_even_when_the_socket_probe_passes(monkeypatch, empty_hub_cache, no_download):
    """A proxy or captive portal lets a TCP connection open; the hub's own request must still
    fail within seconds, not after huggingface_hub's ~50 s of retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        build_model(ModelConfig(name="resnet18", weights="hub"), 4)
    assert time.monotonic() - start < 10
    _assert_helpful(str(info.value), "resnet18")


def test_hub_error_behind_a_passing_probe_never_reaches_timms_retries(monkeypatch, empty_hub_cache):
    import huggingface_hub

    def portal(*a, **k):
        raise OSError("Connection reset by peer (proxy)")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", portal)
    real = timm.create_model

    def guarded(name, *args, **kwargs):
        if kwargs.get("pretrained"):
            pytest.fail("went on to timm's download (and its ~50 s of retries) although the hub had failed")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(timm, "create_model", guarded)
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        build_model(ModelConfig(name="resnet18", weights="hub"), 4)
    assert time.monotonic() - start < 3
    _assert_helpful(str(info.value), "resnet18")
    assert "Connection reset" in str(info.value)


def test_hub_preflight_timeout_is_bounded(monkeypatch):
    import huggingface_hub

    def hang(*a, **k):
        time.sleep(30)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", hang)
    start = time.monotonic()
    why = hub._hub_preflight("timm/resnet18.a1_in1k", timeout=0.5)
    assert time.monotonic() - start < 3
    assert "did not answer" in why


def test_model_without_pretrained_weights_is_named(monkeypatch, empty_hub_cache, no_download):
    assert not hub.has_pretrained_weights("coatnet_nano_cc_224")
    with pytest.raises(ModelError, match="no pretrained weights for coatnet_nano_cc_224"):
        build_model(ModelConfig(name="coatnet_nano_cc_224", weights="hub"), 4)


def test_weights_availability_sees_the_cache(empty_hub_cache):
    assert weights_availability(BUNDLED_MODEL) == "bundled"
    assert weights_availability("resnet18") == "needs network"
    hub_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    repo = empty_hub_cache / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"x")
    assert weights_availability("resnet18") == "cached"


# --------------------------------------------------------------------------- #
# Local weight files
# --------------------------------------------------------------------------- #

def test_safetensors_round_trip(tmp_path):
    src = small("resnet18", num_classes=10)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    same = build_model(ModelConfig(name="resnet18", weights="file", weights_file=str(path)), 10)
    for k, v in src.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k
    # another class count: backbone from the file, a new head
    other = build_model(ModelConfig(name="resnet18", weights="file", weights_file=str(path)), 3)
    assert other.fc.out_features == 3
    assert torch.equal(other.conv1.weight, src.conv1.weight)
    assert torch.equal(other.layer4[1].bn2.running_var, src.layer4[1].bn2.running_var)


def test_pth_is_loaded_with_weights_only(tmp_path, monkeypatch):
    src = small("resnet18", num_classes=10)
    path = tmp_path / "r18.pth"
    torch.save({"epoch": 3, "state_dict": src.state_dict()}, path)
    seen = []
    real_load = torch.load

    def spy(*a, **k):
        seen.append(k.get("weights_only"))
        return real_load(*a, **k)
    monkeypatch.setattr(torch, "load", spy)
    model = build_model(ModelConfig(name="resnet18", weights="file", weights_file=str(path)), 10)
    assert seen == [True]
    assert torch.equal(model.conv1.weight, src.conv1.weight)


def test_dataparallel_prefix_is_stripped(tmp_path):
    src = small("resnet18", num_classes=10)
    path = tmp_path / "dp.pth"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, path)
    model = build_model(ModelConfig(name="resnet18", weights="file", weights_file=str(path)), 10)
    assert torch.equal(model.conv1.weight, src.conv1.weight)


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pth_with_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"conv1.weight": torch.zeros(1), "payload": Payload(marker)}, f)
    assert not marker.exists()
    with pytest.raises(ModelError, match="holds Python objects") as info:
        load_weights_file(path)
    assert "weights_only=False" not in str(info.value)  # torch's advice to run the file's code
    with pytest.raises(ModelError, match="evil.pth"):
        build_model(ModelConfig(name="resnet18", weights="file", weights_file=str(path)), 3)
    assert not marker.exists(), "loading a .pth must never run pickled code"
    with open(path, "rb") as f:  # (the payload is real: plain pickle would run it)
        pytest.raises(Exception, pickle.load, f)


def test_weights_of_another_architecture_are_named(tmp_path):
    # same layer names, other shapes
    path = tmp_path / "vit_small.safetensors"
    save_file({k: v.contiguous() for k, v in small("vit_small_patch16_224", img_size=32).state_dict().items()},
              str(path))
    with pytest.raises(ModelError) as info:
        build_model(ModelConfig(name="vit_tiny_patch16_224", weights="file", weights_file=str(path)), 3)
    msg = str(info.value)
    assert "vit_tiny_patch16_224" in msg and "vit_small.safetensors" in msg
    assert "another shape" in msg and "(384," in msg and "(192," in msg
    # other layer names
    path = tmp_path / "r34.safetensors"
    save_file({k: v.contiguous() for k, v in small("resnet34").state_dict().items()}, str(path))
    with pytest.raises(ModelError) as info:
        build_model(ModelConfig(name="resnet18", weights="file", weights_file=str(path)), 3)
    assert "unexpected" in str(info.value) and "resnet18" in str(info.value)
    assert "layer1.2" in str(info.value)


def test_weights_file_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_weights_file(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load_weights_file(bad)
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"\.safetensors"):
        load_weights_file(odd)
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(ModelError, match="plain state dict"):
        load_weights_file(notdict)


def test_bundled_file_in_its_own_naming_loads_as_a_local_file():
    model = build_model(ModelConfig(name=BUNDLED_MODEL, weights="file", weights_file=str(bundled_weights_path())), 4)
    state = torch.load(bundled_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.conv_stem.weight, state["_conv_stem.weight"])
    assert model.classifier.out_features == 4


# --------------------------------------------------------------------------- #
# Random init, names, data config, info
# --------------------------------------------------------------------------- #

def test_random_weights_warn():
    with pytest.warns(UserWarning, match="random weights.*learn poorly"):
        model = build_model(ModelConfig(name="resnet18", weights="random"), 6)
    assert model.fc.out_features == 6


def test_pretrained_sources_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        build_model(ModelConfig(), 3)


@pytest.mark.parametrize("typo,expected", [("efficentnet_b0", "efficientnet_b0"),
                                           ("resnt18", "resnet18"),
                                           ("convnext_atoo", "convnext_atto"),
                                           ("vit_tiny", "vit_tiny_patch16_224")])
def test_unknown_model_name_suggests(typo, expected):
    with pytest.raises(ModelError) as info:
        build_model(ModelConfig(name=typo, weights="random"), 3)
    msg = str(info.value)
    assert repr(typo) in msg and "Did you mean" in msg
    assert expected in msg.split("Did you mean:")[1]
    with pytest.raises(ModelError, match="no model named"):
        model_info(typo)


def test_tagged_model_names_are_accepted():
    with pytest.warns(UserWarning, match="random"):
        model = build_model(ModelConfig(name="resnet18.a1_in1k", weights="random"), 3)
    assert model.fc.out_features == 3


def test_data_config_image_size():
    model = small("resnet18")
    default = data_config(model)
    assert default["input_size"] == (3, 224, 224)
    cfg = data_config(model, image_size=96)
    assert cfg["input_size"] == (3, 96, 96)
    assert cfg["mean"] == default["mean"] and cfg["std"] == default["std"]
    x = timm.data.create_transform(**cfg)(Image.fromarray(skimage.data.coffee()))
    assert tuple(x.shape) == (3, 96, 96)
    lite = data_config(build_model(ModelConfig(), 3))
    assert lite["mean"] == (0.5, 0.5, 0.5)  # read from timm, not ImageNet's defaults


def test_model_info(empty_hub_cache):
    info = model_info("resnet18")
    assert info["name"] == "resnet18"
    assert info["params"] == sum(p.numel() for p in small("resnet18").parameters()) == 11_689_512
    assert info["resolution"] == 224
    assert info["weights"] == "needs network"
    lite = model_info(BUNDLED_MODEL)
    assert lite["weights"] == "bundled" and lite["resolution"] == 224
    assert lite["params"] == sum(p.numel() for p in small(BUNDLED_MODEL).parameters())
    assert model_info("eva02_tiny_patch14_224")["resolution"] == 224


def test_search_models():
    hits = catalog.search_models("efficientnet_lite")
    assert "tf_efficientnet_lite0" in hits
    assert all("efficientnet_lite" in h for h in hits)
    assert catalog.search_models("resnet1*") and all(h.startswith("resnet1") for h in catalog.search_models("resnet1*"))
