"""Plotly figures of the health check: the embedding map and the per-class learning curves."""
from __future__ import annotations

import os

import plotly.graph_objects as go

PALETTE = ["#2563eb", "#16a34a", "#f97316", "#9333ea", "#0891b2", "#db2777", "#65a30d", "#ca8a04",
           "#475569", "#dc2626"]
MARKS = {"label": "x", "leak": "diamond", "label conflict": "diamond", "duplicate": "square",
         "exact duplicate": "square", "outlier": "star"}


def embedding_map_figure(result) -> go.Figure:
    """All images in 2-D (PCA of the embeddings), coloured by given class; flagged images drawn
    large in black outline with their finding's symbol. Hover shows the file and the finding."""
    flags: dict[str, str] = {}
    for f in result.findings:
        for p in f.paths[: 1 if f.kind == "label" else 2]:
            flags.setdefault(p, f.kind if f.kind != "label" else f"label: looks like {f.suggested}")
    fig = go.Figure()
    xy = result.map_xy
    for c, name in enumerate(result.classes):
        idx = [i for i, g in enumerate(result.given) if g == c]
        fig.add_scattergl(x=xy[idx, 0], y=xy[idx, 1], mode="markers", name=name,
                          marker=dict(size=7, color=PALETTE[c % len(PALETTE)], opacity=0.75),
                          customdata=[[_short(result.paths[i]), result.parts[i], flags.get(result.paths[i], "")]
                                      for i in idx],
                          hovertemplate="%{customdata[0]}<br>" + name + " (%{customdata[1]})<br>"
                                        "%{customdata[2]}<extra></extra>")
    flagged = [i for i, p in enumerate(result.paths) if p in flags]
    if flagged:
        fig.add_scatter(x=xy[flagged, 0], y=xy[flagged, 1], mode="markers", name="flagged",
                        marker=dict(size=13, color="rgba(0,0,0,0)", line=dict(color="black", width=2),
                                    symbol=[MARKS.get(flags[result.paths[i]].split(":")[0], "circle-open")
                                            for i in flagged]),
                        customdata=[[_short(result.paths[i]), result.classes[result.given[i]],
                                     flags[result.paths[i]]] for i in flagged],
                        hovertemplate="%{customdata[0]}<br>given %{customdata[1]}<br>"
                                      "<b>%{customdata[2]}</b><extra></extra>")
    fig.update_layout(title=f"Map of all {len(result.paths)} images (PCA of the backbone's features)",
                      height=460, margin=dict(l=30, r=20, t=50, b=30), template="plotly_white",
                      legend=dict(orientation="h", y=-0.08), xaxis=dict(showticklabels=False, title=""),
                      yaxis=dict(showticklabels=False, title=""))
    return fig


def learning_curve_figure(curves) -> go.Figure:
    fig = go.Figure()
    for c, curve in enumerate(curves):
        fig.add_scatter(x=curve.counts, y=curve.recall, mode="lines+markers", name=curve.name,
                        line=dict(color=PALETTE[c % len(PALETTE)]))
    fig.update_layout(title="Validation recall per class vs. training images (linear heads on features)",
                      xaxis_title="training images of the class", yaxis=dict(range=[0, 1.02], tickformat=".0%"),
                      height=340, margin=dict(l=50, r=20, t=50, b=40), template="plotly_white")
    return fig


def _short(path: str, parts: int = 3) -> str:
    return os.sep.join(path.split(os.sep)[-parts:])
