"""Presets tab: fill every setting from a preset (the repo's ``presets/*.json`` and
the ones saved in ``<workspace>/presets/``), or save the current settings as one.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import gradio as gr

from ...config import RunConfig, load_preset
from ...data.bundled import builtin_presets_dir
from ...errors import ConfigError
from ..access import person_key
from ..catalog_info import CatalogInfo
from ..common import md, this_tab
from ..fields import FIELD_NAMES, FIELDS, config_from_values, values_from_config

BUILTIN_DIR = builtin_presets_dir()   # presets/ of the checkout, or its copy inside an installed package
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def user_dir(workspace) -> Path:
    return Path(workspace) / "presets"


def _meta(path: Path) -> dict:
    """name and description without validating the config (a broken preset still gets listed)."""
    try:
        raw = json.loads(path.read_text())
        raw = raw if isinstance(raw, dict) else {}
    except (OSError, json.JSONDecodeError):
        raw = {}
    return {"name": str(raw.get("name") or path.stem), "description": str(raw.get("description") or "")}


def preset_choices(workspace) -> list[tuple[str, str]]:
    out = []
    for folder, tag in ((BUILTIN_DIR, "built-in"), (user_dir(workspace), "saved")):
        if folder.is_dir():
            out += [(f"{_meta(p)['name']} ({tag})", str(p)) for p in sorted(folder.glob("*.json"))]
    return out


def works_offline(cfg: RunConfig, workspace, exact: bool = True) -> bool | None:
    """Whether the preset trains without the internet; None when only timm could tell and ``exact``
    is False (the layout, before the engine has loaded: issue #15.3)."""
    if cfg.model.weights in ("bundled", "random", "file"):
        return True
    where = CatalogInfo(workspace).availability(cfg.model.name, exact)
    return None if where is None else where != "needs network"


def offline_default(workspace, exact: bool = True) -> str | None:
    """The first listed preset that can train right now without the internet (the tab opens on it)."""
    for _, path in preset_choices(workspace):
        try:
            cfg, _ = load_preset(Path(path))
        except ConfigError:
            continue
        if works_offline(cfg, workspace, exact):
            return path
    return None


def _known(path: str | None, workspace) -> Path:
    if not path:
        raise gr.Error("Pick a preset first")
    p = Path(path).resolve()
    if p.parent not in (BUILTIN_DIR.resolve(), user_dir(workspace).resolve()) or p.suffix != ".json":
        raise gr.Error("That is not one of the listed presets; press Refresh")
    return p


def _extras(cfg: RunConfig) -> list[str]:
    """Settings a preset changes that no form field shows (kept through session.base_config)."""
    shown = set(FIELDS.values())
    mine, default = cfg.to_dict(), RunConfig().to_dict()
    return [f"{key.replace('_', ' ')} {mine[sec][key]}" for sec in mine for key in mine[sec]
            if (sec, key) not in shown and key != "source" and mine[sec][key] != default[sec][key]]


def describe(path: str | None, workspace, exact: bool = True) -> str:
    if not path:
        return "Pick a preset to see what it does."
    p = Path(path)
    meta = _meta(p)
    try:
        cfg, _ = load_preset(p)
    except ConfigError as exc:
        return f"**{md(meta['name'])}** cannot be used: {md(exc)}"
    m, lo, t = cfg.model, cfg.lora, cfg.train
    size = f"{m.image_size} px" if m.image_size else "default resolution"
    extras = _extras(cfg)
    offline = {True: "works offline", False: "needs the internet the first time (downloads weights)",
               None: "works offline once its weights were downloaded"}[works_offline(cfg, workspace, exact)]
    return (f"**{md(meta['name'])}** — {md(meta['description'] or 'no description')}\n\n"
            f"`{m.name}` ({m.weights} weights, {size}; {offline}) · LoRA rank {lo.rank}, alpha {lo.alpha:g}, targets "
            f"`{lo.targets}` · {t.epochs} epochs, batch {t.batch_size}, learning rate {t.lr:g}"
            + (f"\n\nAlso sets: {', '.join(extras)}." if extras else ""))


def apply_values(path: str | None, workspace, names: list[str], session) -> list:
    p = _known(path, workspace)
    try:
        cfg, meta = load_preset(p)
    except ConfigError as exc:
        raise gr.Error(str(exc)) from None
    session.base_config = cfg   # what Start training and "save as preset" build on (fields override it)
    values = values_from_config(cfg)
    return [values[n] for n in names] + [
        f"Applied **{meta['name']}**: the Model & LoRA and Train settings are filled in.", session]


def save_preset(workspace, name: str, description: str, replace: bool, names: list[str], values,
                base: RunConfig | None = None, saved_by: str = "") -> Path:
    """Save the form as a preset; ``saved_by`` (access.person_key, multi-user mode only) keeps
    anyone but its author from replacing it (everyone may still apply it)."""
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise gr.Error("Preset name: 1 to 64 letters, digits, '-' or '_' (no spaces), e.g. my-resnet-rank16")
    try:
        cfg = config_from_values(dict(zip(names, values)), base=base)
    except ConfigError as exc:
        raise gr.Error(f"The current settings are not valid, so they were not saved: {exc}") from None
    config = cfg.to_dict()
    config["data"].pop("source", None)   # a preset is settings, not data
    folder = user_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    if path.exists() and not replace:
        raise gr.Error(f"A saved preset named {name} exists; tick 'Replace' to overwrite it, or pick another name")
    if path.exists() and _saved_by(path) not in ("", saved_by) and saved_by:
        raise gr.Error(f"The saved preset {name} is someone else's: save yours under another name")
    preset = {"name": name, "description": (description or "").strip(), "config": config}
    if saved_by:
        preset["saved_by"] = saved_by
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(preset, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _saved_by(path: Path) -> str:
    try:
        who = json.loads(path.read_text()).get("saved_by", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return who if isinstance(who, str) else ""


def build_presets_tab(ctx) -> None:
    tab = this_tab()
    workspace = Path(ctx.workspace)
    names = [n for n in FIELD_NAMES if n in ctx.fields]
    with gr.Row():
        first = offline_default(workspace, exact=False)
        pick = gr.Dropdown(preset_choices(workspace), value=first, label="Preset", scale=3, elem_id="lg-preset-pick")
        refresh_btn = gr.Button("Refresh", size="sm", scale=1)
    about = gr.Markdown(describe(first, workspace, exact=False))
    apply_btn = gr.Button("Apply", variant="primary", interactive=bool(names))
    status_md = gr.Markdown()
    gr.Markdown("### Save the current settings as a preset\nSaved in "
                f"`{user_dir(workspace)}`; the dataset is not part of a preset.", elem_classes=["lg-hint"])
    with gr.Row():
        name = gr.Textbox(label="Name", placeholder="my-preset (letters, digits, - and _)", scale=1)
        description = gr.Textbox(label="Description", placeholder="what it is good for", scale=2)
    replace = gr.Checkbox(False, label="Replace a saved preset of the same name")
    save_btn = gr.Button("Save as preset", interactive=bool(names))

    def refresh(current):
        choices = preset_choices(workspace)
        value = current if current in [v for _, v in choices] else offline_default(workspace)
        return gr.Dropdown(choices=choices, value=value), describe(value, workspace)

    def save(preset_name, desc, overwrite, session, *values):
        path = save_preset(workspace, preset_name, desc, overwrite, names, values, session.base_config,
                           saved_by=person_key(ctx.policy, session))
        return (gr.Dropdown(choices=preset_choices(workspace), value=str(path)), describe(str(path), workspace),
                f"Saved **{path.stem}** to `{path}`.")

    refresh_args = dict(fn=refresh, inputs=[pick], outputs=[pick, about], show_progress="hidden", api_visibility="private")
    refresh_btn.click(**dict(refresh_args, api_visibility="public", api_name="list_presets"))
    if tab is not None:
        tab.select(**refresh_args)
    ctx.shared.setdefault("on_load", []).append(lambda demo: demo.load(**refresh_args))
    pick.change(lambda p: describe(p, workspace), pick, about, show_progress="hidden", api_visibility="private")
    if not names:   # built alone, without the Model and Train tabs: nothing to fill or read
        return
    fields = [ctx.fields[n] for n in names]
    session = ctx.session
    apply_btn.click(lambda p, sess: apply_values(p, workspace, names, sess), [pick, session],
                    [*fields, status_md, session], api_name="apply_preset")
    save_btn.click(save, [name, description, replace, session, *fields], [pick, about, status_md],
                   api_name="save_preset")
