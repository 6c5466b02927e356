"""Model & LoRA tab: which backbone, which starting weights, and what LoRA trains."""
from __future__ import annotations

import shutil
import uuid
from functools import lru_cache
from pathlib import Path

import gradio as gr
import timm
import torch

from ... import backbones as models
from ... import lora
from ...config import LoraConfig
from ...errors import ConfigError
from ..common import PRIVATE
from ..context import AppContext

TARGET_CHOICES = [
    ("auto (recommended for this model)", "auto"),
    ("attention: qkv / proj of attention blocks", "attention"),
    ("attention + mlp", "attention+mlp"),
    ("all linear layers except the head", "all-linear"),
    ("all convolutions (not depthwise)", "all-conv"),
    ("late blocks: the last third of the network (fastest)", "late-blocks"),
]

HELP = """**What these mean.** LoRA keeps the pretrained model frozen and learns a small *correction* for
some of its layers. **Rank** is the size of that correction: 4-16 is plenty for a few classes; higher
learns more but is slower and overfits small datasets sooner. **Alpha** scales the correction
(update = alpha / rank x learned part); keep alpha = 2 x rank unless you know why. **Dropout**
randomly hides part of the correction while training, which helps with very few images.
**Target layers** are the layers that get a correction; the classifier head is always trained in full."""


@lru_cache(maxsize=256)
def catalog_label(name: str) -> str:
    try:
        info = models.model_info(name)
    except Exception:
        return name
    return f"{name}  ·  {info['params'] / 1e6:.1f}M params  ·  {info['resolution']}px  ·  {info['weights']}"


def catalog_choices() -> list[tuple[str, str]]:
    return [(catalog_label(e.name), e.name) for e in models.CATALOG]


@lru_cache(maxsize=16)
def _skeleton(name: str, num_classes: int):
    """The model's structure without weights (meta device): enough to list layers and count."""
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=num_classes)


def layer_summary(name: str, targets: str, rank, train_norm: bool, train_bias: bool, num_classes: int):
    """(markdown, rows) describing what LoRA would wrap and train."""
    if not name or not timm.is_model(name):
        return f"Unknown model '{name}': pick one from the list or search.", []
    try:
        cfg = LoraConfig(rank=int(rank or 8), targets=targets or "auto", train_norm=train_norm,
                         train_bias=train_bias)
        model = _skeleton(name, num_classes)
        est = lora.estimate_trainable(model, cfg)
    except (ConfigError, lora.LoraError) as exc:
        return f"**Target layers:** {exc}", []
    rows = {l.name: l for l in lora.list_layers(model)}
    table = [[n, rows[n].type, rows[n].shape, rows[n].params, "LoRA"] for n in est["layers"]]
    table += [[n, rows[n].type, rows[n].shape, rows[n].params, f"skipped: {why}"] for n, why in est["skipped"]]
    text = (f"**{len(est['layers'])} layers get LoRA** ({est['lora_params']:,} parameters) + the head "
            f"({est['head_params']:,})" + (f" + norms/biases ({est['other_params']:,})" if est["other_params"] else "")
            + f" → **{est['trainable']:,} trainable of {est['total']:,} ({est['share']:.2%})**"
            + (f"; {len(est['skipped'])} matching layers can't take LoRA (see the table)" if est["skipped"] else ""))
    return text, table


def model_note(name: str) -> str:
    if not name:
        return ""
    try:
        info = models.model_info(name)
    except models.ModelError as exc:
        return str(exc)
    where = {"bundled": "weights ship with lora_gui: works offline",
             "cached": "pretrained weights are in the local cache",
             "needs network": "pretrained weights need the internet (Hugging Face hub) the first time"}[info["weights"]]
    return f"{info['params'] / 1e6:.1f}M parameters, {info['resolution']}px by default; {where}."


def build_model_tab(ctx: AppContext) -> None:
    with gr.Row():
        with gr.Column(scale=3):
            model_name = gr.Dropdown(catalog_choices(), value=models.BUNDLED_MODEL, label="Backbone",
                                     allow_custom_value=True, filterable=True,
                                     info="Fast-on-CPU models first. Type to filter, or search all of timm below.")
            note = gr.Markdown(model_note(models.BUNDLED_MODEL), elem_id="lg-model-note")
        with gr.Column(scale=2):
            search = gr.Textbox(label="Search all timm models", placeholder="e.g. convnext, vit_small*")
            found = gr.Dropdown([], label="Matches (pick one to use it)", interactive=True)
    with gr.Row():
        weights = gr.Radio([("bundled (offline)", "bundled"), ("pretrained from the hub", "hub"),
                            ("local file", "file"), ("random (learns poorly)", "random")],
                           value="bundled", label="Starting weights")
        weights_upload = gr.File(file_types=[".safetensors", ".pth", ".pt", ".bin"], label="Weights file",
                                 visible=False)
        weights_file = gr.Textbox(label="Weights file path", visible=False)
    gr.Markdown(HELP, elem_classes="lg-hint")
    with gr.Row():
        rank = gr.Slider(1, 64, value=8, step=1, label="Rank (r)", info="size of the learned correction")
        alpha = gr.Number(value=16, label="Alpha", info="strength: update = alpha / rank", minimum=0.01)
        dropout = gr.Slider(0, 0.5, value=0.0, step=0.05, label="LoRA dropout")
    targets = gr.Dropdown(TARGET_CHOICES, value="auto", allow_custom_value=True, label="Target layers",
                          info="A preset, 're:<regex>' (full match on layer names) or comma-separated name endings")
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            train_norm = gr.Checkbox(False, label="Also train normalisation layers")
            train_bias = gr.Checkbox(False, label="Also train biases")
            use_rslora = gr.Checkbox(False, label="rsLoRA scaling (alpha / sqrt(rank))")
    count = gr.Markdown(elem_id="lg-trainable")
    layers = gr.Dataframe(headers=["layer", "type", "weight shape", "params", "LoRA"], interactive=False,
                          label="Matching layers", max_height=320)
    ctx.fields.update(model_name=model_name, weights=weights, weights_file=weights_file, rank=rank, alpha=alpha,
                      dropout=dropout, targets=targets, train_norm=train_norm, train_bias=train_bias,
                      use_rslora=use_rslora)

    def refresh(session, name, tg, r, tn, tb):
        k = len(session.dataset.classes) if session.dataset is not None and session.dataset.classes else 2
        text, rows = layer_summary(name, tg, r, tn, tb, max(2, k))
        return text, rows

    def on_model(name, current_weights):
        w = current_weights
        if name == models.BUNDLED_MODEL and w == "hub":
            w = "bundled"
        elif name != models.BUNDLED_MODEL and w == "bundled":
            w = "hub"
        return model_note(name), w

    def do_search(query):
        hits = models.search_models(query or "", limit=100) if (query or "").strip() else []
        return gr.Dropdown(choices=hits, value=None, label=f"Matches ({len(hits)} shown)")

    def pick(hit):
        return gr.skip() if not hit else hit

    def on_weights(w):
        return gr.File(visible=w == "file"), gr.Textbox(visible=w == "file")

    def upload_weights(file, session):
        if not file:
            return gr.skip(), session
        # a folder per upload: two people uploading 'model.pth' never overwrite each other's file
        dest_dir = ctx.workspace / "weights" / f"{session.id}-{uuid.uuid4().hex[:8]}"
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / Path(str(file)).name
        shutil.copyfile(str(file), dest)
        try:
            models.load_weights_file(dest)
        except models.ModelError as exc:
            shutil.rmtree(dest_dir, ignore_errors=True)
            raise gr.Error(str(exc)) from None
        session.weights_upload = str(dest)
        return str(dest), session

    def alpha_follows_rank(r, a, prev_r):
        return gr.skip() if a != 2 * (prev_r or 8) else 2 * r

    summary_inputs = [ctx.session, model_name, targets, rank, train_norm, train_bias]
    for comp in (model_name, targets, train_norm, train_bias):
        comp.change(refresh, summary_inputs, [count, layers], **PRIVATE)
    rank.release(refresh, summary_inputs, [count, layers], **PRIVATE)
    model_name.change(on_model, [model_name, weights], [note, weights], **PRIVATE)
    search.submit(do_search, search, found, api_name="search_models")
    found.change(pick, found, model_name, **PRIVATE)
    weights.change(on_weights, weights, [weights_upload, weights_file], **PRIVATE)
    weights_upload.upload(upload_weights, [weights_upload, ctx.session], [weights_file, ctx.session],
                          api_name="upload_weights")
    prev_rank = gr.State(8)
    rank.release(alpha_follows_rank, [rank, alpha, prev_rank], alpha, **PRIVATE).then(lambda r: r, rank, prev_rank, **PRIVATE)
    def wire(demo):
        demo.load(refresh, summary_inputs, [count, layers], **PRIVATE)
        ctx.shared["tab:model"].select(refresh, summary_inputs, [count, layers], **PRIVATE)  # class count may have changed
    ctx.shared.setdefault("on_load", []).append(wire)
    ctx.shared["refresh_layers"] = (refresh, summary_inputs, [count, layers])
