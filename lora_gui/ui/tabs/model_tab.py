"""Model & LoRA tab: which backbone, which starting weights, and what LoRA trains."""
from __future__ import annotations

import shutil
import uuid
from functools import lru_cache
from pathlib import Path

import gradio as gr

from ... import backbones as models
from ...config import LoraConfig
from ...errors import ConfigError
from ..catalog_info import AVAILABILITY, CatalogInfo
from ..common import PRIVATE, md
from ..context import AppContext
from ..fields import DEFAULTS, field_problem, lenient, problems_text

WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
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


# torch, timm and lora (torch) are imported by the functions that build models, not when the tab is
# laid out: the page is served before the engine has loaded (issue #15.3, ui/warmup.py).
def _is_model(name: str) -> bool:
    if any(e.name == name for e in models.CATALOG):
        return True
    import timm
    return timm.is_model(name)


@lru_cache(maxsize=16)
def _skeleton(name: str, num_classes: int):
    """The model's structure without weights (meta device): enough to list layers and count."""
    import timm
    import torch
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=num_classes)


def layer_summary(name: str, targets: str, rank, train_norm: bool, train_bias: bool, num_classes: int):
    """(markdown, rows) describing what LoRA would wrap and train."""
    from ... import lora
    if not name or not _is_model(name):
        return f"Unknown model '{md(name)}': pick one from the list or search.", []
    if field_problem("rank", rank):   # said once, in the check line under the LoRA settings
        return "Trainable parameters appear here once the rank above is fixed.", []
    try:
        cfg = LoraConfig(rank=int(rank), targets=targets or "auto", train_norm=train_norm,
                         train_bias=train_bias)
        model = _skeleton(name, num_classes)
        est = lora.estimate_trainable(model, cfg)
    except (ConfigError, lora.LoraError) as exc:
        return f"**Target layers:** {md(exc)}", []
    rows = {l.name: l for l in lora.list_layers(model)}
    table = [[n, rows[n].type, rows[n].shape, rows[n].params, lora_params(model, n, cfg.rank), "LoRA"]
             for n in est["layers"]]
    table += [[n, rows[n].type, rows[n].shape, rows[n].params, 0, f"skipped: {why}"] for n, why in est["skipped"]]
    backbone = est["total"] - est["lora_params"] - est["head_params"]
    text = (f"**{len(est['layers'])} layers get LoRA** ({est['lora_params']:,} parameters) + the new "
            f"{num_classes}-class head ({est['head_params']:,})"
            + (f" + norms/biases ({est['other_params']:,})" if est["other_params"] else "")
            + f" → **{est['trainable']:,} trainable of {est['total']:,} ({est['share']:.2%})**. "
            f"The total is the backbone's {backbone:,} (the size in the list) + the head + LoRA"
            + (f"; {len(est['skipped'])} matching layers can't take LoRA (see Show details below)" if est["skipped"] else "")
            + ".")
    return text, table


def lora_params(model, name: str, rank: int) -> int:
    """The parameters LoRA adds to one layer (rank x (inputs + outputs), as lora.estimate_trainable counts)."""
    import torch
    m = model.get_submodule(name)
    if isinstance(m, torch.nn.Linear):
        return rank * (m.in_features + m.out_features)
    return rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)


def model_note(name: str, info: CatalogInfo, compute: bool = True) -> str:
    """``compute=False`` (the layout): only what is known without timm."""
    if not name:
        return ""
    if not _is_model(name):
        return f"Unknown model '{md(name)}': pick one from the list or search."
    facts = info.get(name, compute=compute)
    size = (f"{facts['params'] / 1e6:.1f}M parameters (without a classifier head), {facts['resolution']} px "
            "by default; " if facts else "")
    where = info.availability(name, exact=compute)
    return f"{size}{AVAILABILITY[where]}." if where else size.removesuffix("; ")


def target_choices(name: str) -> list[tuple[str, str]]:
    """The target presets that find layers in this model (no attention presets on a CNN)."""
    from ... import lora
    if not name or not _is_model(name):
        return TARGET_CHOICES
    try:
        model = _skeleton(name, 2)
    except Exception:
        return TARGET_CHOICES
    usable = []
    for label, preset in TARGET_CHOICES:
        try:
            found, _ = lora.resolve_targets(model, preset)
        except lora.LoraError:
            continue
        if found:
            usable.append((label, preset))
    return usable or TARGET_CHOICES


# handlers -------------------------------------------------------------------------------------------
def refresh_layers(session, name, tg, r, tn, tb):
    """The trainable count and the layer table for the form's values and the dataset's class count."""
    k = len(session.dataset.classes) if session.dataset is not None and session.dataset.classes else 2
    return layer_summary(name, tg, r, tn, tb, max(2, k))


def do_search(query):
    hits = models.search_models(query or "", limit=100) if (query or "").strip() else []
    return gr.Dropdown(choices=hits, value=None, label=f"Matches ({len(hits)} shown)")


def pick(hit):
    return gr.skip() if not hit else hit


def on_weights(w):
    return gr.File(visible=w == "file"), gr.Textbox(visible=w == "file")


def alpha_follows_rank(r, a, prev_r):
    """Alpha moves with the rank (alpha = 2 x rank) unless the person set it to something else."""
    if field_problem("rank", r) or a != 2 * (prev_r or DEFAULTS["rank"]):
        return gr.skip()
    return 2 * r


def remember_rank(r, prev_r):
    return prev_r if field_problem("rank", r) else r


def check_numbers(*values):
    return problems_text(["rank", "alpha", "dropout"], values)


class ModelActions:
    """Handlers that need the workspace (uploaded weights) or the backbone list's cached facts."""

    def __init__(self, workspace: Path, info: CatalogInfo):
        self.workspace, self.info = Path(workspace), info

    def on_model(self, name, current_weights, current_targets):
        w = current_weights
        if name == models.BUNDLED_MODEL and w == "hub":
            w = "bundled"
        elif name != models.BUNDLED_MODEL and w == "bundled":
            w = "hub"
        usable = target_choices(name)
        presets = [v for _, v in TARGET_CHOICES]
        keep = current_targets in [v for _, v in usable] or current_targets not in presets   # a custom pattern stays
        return model_note(name, self.info), w, gr.Dropdown(choices=usable, value=current_targets if keep else "auto")

    def on_visit(self, name):
        """The list's sizes (computed once, then cached on disk); which weights are at hand now."""
        self.info.fill()
        return (self.info.offline_summary(), gr.Dropdown(choices=self.info.choices(), value=name),
                model_note(name, self.info))

    def upload_weights(self, file, session):
        if not file:
            return gr.skip(), session
        if Path(str(file)).suffix.lower() not in WEIGHTS_SUFFIXES:
            raise gr.Error(f"{Path(str(file)).name} is not a weights file: drop a "
                           f"{', '.join(WEIGHTS_SUFFIXES[:-1])} or {WEIGHTS_SUFFIXES[-1]} file")
        # a folder per upload: two people uploading 'model.pth' never overwrite each other's file
        dest_dir = self.workspace / "weights" / f"{session.id}-{uuid.uuid4().hex[:8]}"
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


# layout -----------------------------------------------------------------------------------------------
def build_model_tab(ctx: AppContext) -> None:
    info = CatalogInfo(ctx.workspace)   # sizes for the list: cached, or computed on the first visit
    offline = gr.Markdown(info.offline_summary(exact=False), elem_id="lg-offline-models")
    with gr.Row():
        with gr.Column(scale=3):
            model_name = gr.Dropdown(info.choices(exact=False), value=DEFAULTS["model_name"], label="Backbone",
                                     allow_custom_value=True, filterable=True,
                                     info="Fast-on-CPU models first. Type to filter, or search all of timm below.")
            note = gr.Markdown(model_note(DEFAULTS["model_name"], info, compute=False), elem_id="lg-model-note")
        with gr.Column(scale=2):
            search = gr.Textbox(label="Search all timm models", placeholder="e.g. convnext, vit_small*")
            found = gr.Dropdown([], label="Matches (pick one to use it)", interactive=True)
    with gr.Row():
        weights = gr.Radio([("bundled (offline)", "bundled"), ("pretrained from the hub", "hub"),
                            ("local file", "file"), ("random (learns poorly)", "random")],
                           value=DEFAULTS["weights"], label="Starting weights")
        # no file_types: Gradio's own check turns the zone into a red "Error" pill (upload_weights checks)
        weights_upload = gr.File(label="Weights file (.safetensors, .pth, .pt or .bin)", visible=False)
        weights_file = gr.Textbox(label="Weights file path", visible=False)
    gr.Markdown(HELP, elem_classes="lg-hint")
    with gr.Row():
        rank = gr.Slider(1, 64, value=DEFAULTS["rank"], step=1, label="Rank (r)", info="size of the learned correction")
        alpha = gr.Number(value=DEFAULTS["alpha"], label="Alpha", info="strength: update = alpha / rank", minimum=0.01)
        dropout = gr.Slider(0, 0.5, value=DEFAULTS["dropout"], step=0.05, label="LoRA dropout")
    lenient(rank, alpha, dropout)
    check = gr.Markdown(elem_id="lg-model-check")
    targets = gr.Dropdown(TARGET_CHOICES, value=DEFAULTS["targets"], allow_custom_value=True, label="Target layers",
                          info="A preset, 're:<regex>' (full match on layer names) or comma-separated name endings")
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            train_norm = gr.Checkbox(DEFAULTS["train_norm"], label="Also train normalisation layers")
            train_bias = gr.Checkbox(DEFAULTS["train_bias"], label="Also train biases")
            use_rslora = gr.Checkbox(DEFAULTS["use_rslora"], label="rsLoRA scaling (alpha / sqrt(rank))")
    count = gr.Markdown(elem_id="lg-trainable")
    with gr.Accordion("Show details: the layers LoRA changes", open=False, elem_id="lg-layers-details"):
        layers = gr.Dataframe(headers=["layer", "type", "weight shape", "params", "LoRA params", "LoRA"],
                              interactive=False, label="Matching layers", max_height=320)
    ctx.fields.update(model_name=model_name, weights=weights, weights_file=weights_file, rank=rank, alpha=alpha,
                      dropout=dropout, targets=targets, train_norm=train_norm, train_bias=train_bias,
                      use_rslora=use_rslora)

    act = ModelActions(ctx.workspace, info)
    numbers = [rank, alpha, dropout]

    summary_inputs = [ctx.session, model_name, targets, rank, train_norm, train_bias]
    for comp in (model_name, targets, train_norm, train_bias):
        comp.change(refresh_layers, summary_inputs, [count, layers], **PRIVATE)
    # .change: fires for drags, typing (Enter or leaving the box) and the slider clamping a typed value,
    # so the trainable count always describes the rank shown
    rank.change(refresh_layers, summary_inputs, [count, layers], trigger_mode="always_last", **PRIVATE)
    for comp in (rank, dropout):
        comp.change(check_numbers, numbers, check, show_progress="hidden", **PRIVATE)
    for listen in (alpha.submit, alpha.blur):
        listen(check_numbers, numbers, check, show_progress="hidden", **PRIVATE)
    model_name.change(act.on_model, [model_name, weights, targets], [note, weights, targets], **PRIVATE)
    search.submit(do_search, search, found, api_name="search_models")
    found.change(pick, found, model_name, **PRIVATE)
    weights.change(on_weights, weights, [weights_upload, weights_file], **PRIVATE)
    weights_upload.upload(act.upload_weights, [weights_upload, ctx.session], [weights_file, ctx.session],
                          api_name="upload_weights")
    prev_rank = gr.State(DEFAULTS["rank"])
    rank.change(alpha_follows_rank, [rank, alpha, prev_rank], alpha, trigger_mode="always_last",
                **PRIVATE).then(remember_rank, [rank, prev_rank], prev_rank, **PRIVATE)
    def wire(demo):
        demo.load(refresh_layers, summary_inputs, [count, layers], **PRIVATE)
        ctx.shared["tab:model"].select(refresh_layers, summary_inputs, [count, layers], **PRIVATE)  # class count may have changed
        ctx.shared["tab:model"].select(act.on_visit, model_name, [offline, model_name, note], show_progress="hidden",
                                       **PRIVATE)
    ctx.shared.setdefault("on_load", []).append(wire)
    ctx.shared["refresh_layers"] = (refresh_layers, summary_inputs, [count, layers])
