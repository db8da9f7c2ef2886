"""Plotly figures of rollouts: one episode, two episodes compared, and success rates.

Every time series is plotted against the policy step t, with a vertical marker at the step the app shows. The
predicted state of step t is the model's guess of the state after action t, so it is drawn at t + 1, over the
state observed there; the residual is what the feedback rules correct, observed minus the state input.
"""

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from fasvla.app.rollouts import EpisodeData

COLORS = qualitative.Plotly
LINES = {"observed": "solid", "predicted": "dash", "state input": "dot"}
ROLLOUT_LINES = ("solid", "dash")  # rollout A, rollout B in comparisons


def episode_figure(episode: EpisodeData, state_dims: list[int], step: int) -> go.Figure:
    """Actions sent; observed vs predicted vs state input; residual; policy latency (4 rows, shared step axis)."""
    figure = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.25, 0.35, 0.2,
                                                                                                   0.2],
                           subplot_titles=["actions sent", "state: observed, predicted (dashed), input (dotted)",
                                           "residual: observed - state input", "policy latency (ms)"])
    t = np.arange(episode.num_steps)
    for i, name in enumerate(episode.action_names):
        figure.add_trace(_line(t, episode.actions[:, i], f"sent {name}", COLORS[i % len(COLORS)]), row=1, col=1)
    for color, i in enumerate(state_dims):
        name, colour = episode.state_names[i], COLORS[color % len(COLORS)]
        for label, x, y in (("observed", t, episode.states[:, i]), ("predicted", t + 1, episode.predicted_states[:, i]),
                            ("state input", t, episode.state_inputs[:, i])):
            figure.add_trace(_line(x, y, f"{label} {name}", colour, LINES[label]), row=2, col=1)
        residual = episode.states[:, i] - episode.state_inputs[:, i]
        figure.add_trace(_line(t, residual, f"residual {name}", colour), row=3, col=1)
    figure.add_trace(go.Bar(x=t.tolist(), y=_values(episode.latency_ms), name="latency", marker_color="#888",
                            showlegend=False), row=4, col=1)
    figure.update_xaxes(title_text="policy step", row=4, col=1)
    return _finish(figure, step, height=820)


def comparison_figure(a: EpisodeData, b: EpisodeData, state_dims: list[int], step: int) -> go.Figure:
    """Observed states, actions sent and latencies of two rollouts (A solid, B dashed) on one step axis."""
    figure = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.4, 0.4, 0.2],
                           subplot_titles=["observed state (A solid, B dashed)", "actions sent (A solid, B dashed)",
                                           "policy latency (ms)"])
    for episode, dash, tag in ((a, ROLLOUT_LINES[0], "A"), (b, ROLLOUT_LINES[1], "B")):
        t = np.arange(episode.num_steps)
        for color, i in enumerate(state_dims):
            figure.add_trace(_line(t, episode.states[:, i], f"{tag} observed {episode.state_names[i]}",
                                   COLORS[color % len(COLORS)], dash), row=1, col=1)
        for i, name in enumerate(episode.action_names):
            figure.add_trace(_line(t, episode.actions[:, i], f"{tag} sent {name}", COLORS[i % len(COLORS)], dash),
                             row=2, col=1)
        figure.add_trace(_line(t, episode.latency_ms, f"{tag} latency", "#555", dash), row=3, col=1)
    figure.update_xaxes(title_text="policy step", row=3, col=1)
    return _finish(figure, step, height=700)


def success_figure(table) -> go.Figure:
    """Success rate per task (bars), one colour per condition (feedback mode, perturbation, model)."""
    figure = go.Figure()
    for color, (condition, rows) in enumerate(table.groupby("condition", sort=True)):
        figure.add_trace(go.Bar(x=rows["suite / task"].tolist(), y=(100 * rows["success rate"]).tolist(),
                                name=condition, marker_color=COLORS[color % len(COLORS)],
                                text=[f"{s}/{n}" for s, n in zip(rows["successes"], rows["episodes"])]))
    figure.update_layout(barmode="group", yaxis_title="success (%)", yaxis_range=[0, 100], height=380,
                         margin=dict(l=50, r=20, t=30, b=40), legend=dict(orientation="h", y=-0.25))
    return figure


def _line(x, y, name: str, color: str, dash: str = "solid") -> go.Scatter:
    return go.Scatter(x=np.asarray(x).tolist(), y=_values(y), name=name, mode="lines",
                      line=dict(color=color, dash=dash, width=1.6))


def _values(y) -> list:
    """Plain floats for the JSON the browser gets, None (a gap) where the recording has NaN."""
    return [None if np.isnan(v) else float(v) for v in np.asarray(y, dtype=np.float64)]


def _finish(figure: go.Figure, step: int, height: int) -> go.Figure:
    figure.add_vline(x=step, line=dict(color="crimson", width=1.5), row="all", col=1)
    figure.update_layout(height=height, margin=dict(l=50, r=20, t=40, b=40), hovermode="x unified",
                         legend=dict(font=dict(size=10)), uirevision="keep-zoom")
    return figure
