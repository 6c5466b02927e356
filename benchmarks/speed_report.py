"""Issue 15's one results file: the floor run, app vs CLI, scale and the ViT step rates, with the machine.

``python benchmarks/speed_report.py --floor F --app A --scale S --vit V [--floor-untuned U --startup T --startup-change C]``
reads the JSON files the scripts wrote (``floor.py``, the same with ``LORA_GUI_MALLOC_TUNING=0``,
``app_vs_cli.py``, ``scale.py``, ``train_speed.py``, ``startup.py``) and writes
``results/speed-<date>.json`` with the headline ratios on top.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _read(path: str | None) -> dict | None:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


def headline(floor: dict | None, app: dict | None, scale: dict | None, vit: dict | None) -> dict:
    h: dict = {}
    if floor:
        runs, f = floor["runs"], floor["floor"]["pass_s"]
        h["floor_s"] = round(f, 2)
        h["floor_dtype"] = floor["floor"]["dtype"]
        h["x_floor"] = floor["ratios_to_floor"]
        h["held_out_acc"] = {k: r.get("held_out_acc") for k, r in runs.items() if "held_out_acc" in r}
        h["first_model_x_floor"] = {k: round(r["first_model_s"] / f, 2) for k, r in runs.items()
                                    if r.get("first_model_s")}
        if floor.get("median_ratios_to_floor"):   # every repeat's median, beside the least disturbed
            h["x_floor_medians"] = floor["median_ratios_to_floor"]
    if app:
        cli = app["cli"]["images_per_s"]
        for kind in ("app", "app-no-release", "app-old"):
            if kind not in app:
                continue
            a = app[kind]
            h[f"{kind}_images_per_s_vs_cli"] = round(a["images_per_s_alone"] / cli, 3)
            h[f"{kind}_predict_while_training_vs_idle"] = round(
                a["while_training"]["median_ms"] / a["idle"]["median_ms"], 2)
            h[f"{kind}_predict_while_training_ms_all_runs"] = [
                round(x["while_training"]["median_ms"], 1) for x in app.get("all", {}).get(kind, [a])]
        if "gate_overhead" in app:   # training steps with the yield points / without, nobody predicting
            h["yield_points_step_time_ratio"] = round(app["gate_overhead"]["median_ratio"], 3)
    if scale:
        h["scale"] = {n: {"run_s": round(r["engine"]["total_s"], 1), "x_floor": round(r["x_floor"], 2),
                          "peak_rss_mb": round(r["engine"]["peak_rss_mb"]), "cache_mb": r["cache_mb"]}
                      for n, r in scale["sizes"].items()}
        h["plan_50000"] = scale.get("plan_50000")
    if vit:   # train_speed.py: {model: {variant: result}}
        for model, variants in vit.get("results", {}).items():
            peft, engine = variants.get("peft", {}), variants.get("engine", {})
            if peft.get("images_per_s") and engine.get("images_per_s"):
                h[f"{model}_steps_engine_over_peft"] = round(engine["images_per_s"] / peft["images_per_s"], 2)
                h[f"{model}_cpu_steps_engine_over_peft"] = round(
                    engine["images_per_cpu_s"] / peft["images_per_cpu_s"], 2)
    return h


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = ("floor", "floor_untuned", "app", "scale", "vit", "startup", "startup_change")
    for name in names:
        p.add_argument(f"--{name.replace('_', '-')}", help="a later start-up change, measured against the "
                       "commit before it (startup.py --before)" if name == "startup_change" else None)
    p.add_argument("--note", default="", help="how quiet the machine was, in words")
    p.add_argument("--out")
    a = p.parse_args(argv)
    from train_speed import machine_info
    parts = {k: _read(getattr(a, k)) for k in names}
    loads = {k: [v.get("load_before") or v.get("machine", {}).get("load_avg"), v.get("load_after") or v.get("load_avg_end")]
             for k, v in parts.items() if v}
    out = {"issue": 15, "note": a.note, "load_averages": loads,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_info("cpu"),
           "gpu": "none: no device machine was lent to this task",
           "headline": headline(parts["floor"], parts["app"], parts["scale"], parts["vit"]), **parts}
    if parts["floor_untuned"]:   # the same runs with glibc's allocator defaults (LORA_GUI_MALLOC_TUNING=0)
        u = parts["floor_untuned"]
        out["headline"]["glibc_defaults"] = {"floor_s": round(u["floor"]["pass_s"], 2),
                                             **{k: round(r["total_s"], 2) for k, r in u["runs"].items() if "total_s" in r}}
    if parts["startup"]:
        out["headline"]["startup_median_s"] = parts["startup"]["median"]
    if parts["startup_change"]:
        out["headline"]["startup_change_median_s"] = parts["startup_change"]["median"]
    target = Path(a.out or HERE / "results" / f"speed-{time.strftime('%Y-%m-%d')}.json")
    target.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(out["headline"], indent=1))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
