"""Plotly figures for the live training view (plain functions of metric rows)."""
from __future__ import annotations

import html

import plotly.graph_objects as go
import plotly.io as pio

# the legend hangs below the x-axis title (anchored at its top: a legend that wraps grows downwards,
# not up into the title, which plotly's "auto" anchor does for y below 1/3)
LAYOUT = dict(height=300, margin=dict(l=50, r=20, t=40, b=80), legend=dict(orientation="h", yanchor="top", y=-0.36))
_TEMPLATE: dict = {}


def _live_figure(traces: list[dict], **layout) -> go.Figure:
    """A figure of the live training view, built without plotly's validation.

    The Train tab redraws these while a training runs, once per poll of every open tab; built the
    usual way (add_scatter, update_layout with a named template) one set took 50-75 ms of Python
    under the GIL the training needs too, this way ~3 ms. The traces are ours and simple; the
    template is resolved once (plotly.js needs the template itself, not its name)."""
    if not _TEMPLATE:
        _TEMPLATE.update(pio.templates["plotly_white"].to_plotly_json())
    return go.Figure({"data": [dict(type="scatter", **t) for t in traces],
                      "layout": {**LAYOUT, **layout, "template": _TEMPLATE}}, _validate=False)


def _title(text: str) -> dict:
    return {"text": text}


def smooth(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average, debiased like TensorBoard's so the start isn't pulled to 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def loss_figure(step_rows: list[dict], epoch_rows: list[dict] | None = None) -> go.Figure:
    steps = [r["step"] for r in step_rows]
    losses = [r["loss"] for r in step_rows]
    traces = [dict(x=steps, y=losses, mode="lines", name="step loss", line=dict(width=1, color="#a5b4fc"))]
    if losses:
        traces.append(dict(x=steps, y=smooth(losses, 0.8 if len(losses) > 20 else 0.5), mode="lines",
                           name="smoothed", line=dict(width=2.5, color="#4f46e5")))
    val = [r for r in (epoch_rows or []) if r.get("val_loss") is not None]
    if val:
        traces.append(dict(x=[r["step"] for r in val], y=[r["val_loss"] for r in val], mode="lines+markers",
                           name="validation loss", line=dict(width=2, color="#f97316")))
    return _live_figure(traces, title=_title("Loss"), xaxis=dict(title=_title("step")),
                        yaxis=dict(title=_title("loss")))


def accuracy_figure(epoch_rows: list[dict], first_model_acc: float | None = None) -> go.Figure:
    """Accuracy per epoch; ``first_model_acc``: the linear probe's, at epoch 0 (before LoRA)."""
    traces = []
    if first_model_acc is not None:
        traces.append(dict(x=[0], y=[first_model_acc], mode="markers", name="first model (linear probe)",
                           marker=dict(symbol="star", size=13, color="#a855f7")))
    epochs = [r["epoch"] for r in epoch_rows]
    traces.append(dict(x=epochs, y=[r.get("train_acc") for r in epoch_rows], mode="lines+markers",
                       name="train accuracy", line=dict(color="#38bdf8")))
    traces.append(dict(x=epochs, y=[r.get("val_acc") for r in epoch_rows], mode="lines+markers",
                       name="validation accuracy", line=dict(color="#16a34a", width=3)))
    return _live_figure(traces, title=_title("Accuracy per epoch"), xaxis=dict(title=_title("epoch"), dtick=1),
                        yaxis=dict(range=[0, 1.02], tickformat=".0%"))


def lr_figure(step_rows: list[dict]) -> go.Figure:
    traces = [dict(x=[r["step"] for r in step_rows], y=[r["lr"] for r in step_rows], mode="lines",
                   name="learning rate", line=dict(color="#64748b"))]
    return _live_figure(traces, title=_title("Learning rate"), xaxis=dict(title=_title("step")))


TICK_CHARS = 18   # class names longer than this are cut on the axes (the hover shows them whole)


def _tick(name: str) -> str:
    """A class name as an axis label: cut to TICK_CHARS, and escaped, because Plotly reads
    '<b>' or '&amp;' in a label as markup."""
    name = str(name)
    short = name if len(name) <= TICK_CHARS else name[:TICK_CHARS - 1] + "…"
    return html.escape(short, quote=False)


def _class_axis(names: list[str]) -> dict:
    """Positions 0..k-1 with the cut names as their labels: two long names that start alike stay
    two columns (as categories, cut names would merge)."""
    return dict(tickmode="array", tickvals=list(range(len(names))), ticktext=[_tick(n) for n in names],
                automargin=True)   # slanted labels get the room they need instead of leaving the figure


def class_distribution_figure(counts) -> go.Figure:
    """Bar chart of images per class: a {class: count} dict, or split_counts rows (class, train, val),
    which are then stacked."""
    fig = go.Figure()
    rows = [(k, v) for k, v in counts.items()] if isinstance(counts, dict) else list(counts)
    names = [str(r[0]) for r in rows]
    where = list(range(len(names)))
    hover = [html.escape(n, quote=False) for n in names]
    if isinstance(counts, dict):
        fig.add_bar(x=where, y=[r[1] for r in rows], name="images", customdata=hover,
                    hovertemplate="%{customdata}: %{y} images<extra></extra>")
    else:
        fig.add_bar(x=where, y=[r[1] for r in rows], name="train", customdata=hover,
                    hovertemplate="%{customdata}: %{y} training images<extra></extra>")
        fig.add_bar(x=where, y=[r[2] for r in rows], name="validation", customdata=hover,
                    hovertemplate="%{customdata}: %{y} validation images<extra></extra>")
        fig.update_layout(barmode="stack")
    fig.update_layout(title="Images per class", xaxis_title="class", yaxis_title="images",
                      height=320, margin=dict(l=40, r=20, t=50, b=40))
    fig.update_xaxes(**_class_axis(names), tickangle=-35 if len(names) > 6 else 0)
    return fig


def confusion_figure(result, normalize: bool = False) -> go.Figure:
    """Heatmap of an ``inference.evaluate.EvalResult``: rows are the true classes (top to bottom),
    columns the predictions. ``normalize`` colours by the share of each true class (recall per
    cell); the cell text always shows the image counts."""
    classes, counts = [str(c) for c in result.classes], result.confusion
    z = [[c / sum(row) if sum(row) else 0.0 for c in row] for row in counts] if normalize else counts
    k = len(classes)
    shown = [html.escape(c, quote=False) for c in classes]
    cells = [[[counts[i][j], shown[i], shown[j]] for j in range(k)] for i in range(k)]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(k)), y=list(range(k)), colorscale="Blues", customdata=cells,
        text=counts if k <= 30 else None, texttemplate="%{text}" if k <= 30 else None,
        hovertemplate="true %{customdata[1]}<br>predicted %{customdata[2]}<br>%{customdata[0]} images<extra></extra>",
        colorbar=dict(title="share" if normalize else "images")))
    side = min(900, 300 + 28 * k)
    fig.update_layout(title=f"Confusion matrix — accuracy {result.accuracy:.1%} on {result.total} images",
                      xaxis_title="predicted class", yaxis_title="true class", height=side,
                      margin=dict(l=60, r=20, t=50, b=60))
    fig.update_yaxes(autorange="reversed", **_class_axis(classes))
    fig.update_xaxes(**_class_axis(classes), tickangle=-45 if k > 4 else 0)
    return fig
