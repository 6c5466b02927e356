"""Plotly figures for the live training view (plain functions of metric rows)."""
from __future__ import annotations

import plotly.graph_objects as go

LAYOUT = dict(height=300, margin=dict(l=50, r=20, t=40, b=80), legend=dict(orientation="h", y=-0.32),
              template="plotly_white")


def smooth(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average, debiased like TensorBoard's so the start isn't pulled to 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def loss_figure(step_rows: list[dict], epoch_rows: list[dict] | None = None) -> go.Figure:
    fig = go.Figure()
    steps = [r["step"] for r in step_rows]
    losses = [r["loss"] for r in step_rows]
    fig.add_scatter(x=steps, y=losses, mode="lines", name="step loss", line=dict(width=1, color="#a5b4fc"))
    if losses:
        fig.add_scatter(x=steps, y=smooth(losses, 0.8 if len(losses) > 20 else 0.5), mode="lines",
                        name="smoothed", line=dict(width=2.5, color="#4f46e5"))
    val = [r for r in (epoch_rows or []) if r.get("val_loss") is not None]
    if val:
        fig.add_scatter(x=[r["step"] for r in val], y=[r["val_loss"] for r in val], mode="lines+markers",
                        name="validation loss", line=dict(width=2, color="#f97316"))
    fig.update_layout(title="Loss", xaxis_title="step", yaxis_title="loss", **LAYOUT)
    return fig


def accuracy_figure(epoch_rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    epochs = [r["epoch"] for r in epoch_rows]
    fig.add_scatter(x=epochs, y=[r.get("train_acc") for r in epoch_rows], mode="lines+markers",
                    name="train accuracy", line=dict(color="#38bdf8"))
    fig.add_scatter(x=epochs, y=[r.get("val_acc") for r in epoch_rows], mode="lines+markers",
                    name="validation accuracy", line=dict(color="#16a34a", width=3))
    fig.update_layout(title="Accuracy per epoch", xaxis_title="epoch", yaxis=dict(range=[0, 1.02], tickformat=".0%"),
                      **LAYOUT)
    fig.update_xaxes(dtick=1)
    return fig


def lr_figure(step_rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=[r["step"] for r in step_rows], y=[r["lr"] for r in step_rows], mode="lines",
                    name="learning rate", line=dict(color="#64748b"))
    fig.update_layout(title="Learning rate", xaxis_title="step", **LAYOUT)
    return fig
