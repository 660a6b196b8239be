"""Key dashboard panels drawn from what a real Prometheus scraped (the demo's), so a reader
sees what Grafana would show: the same queries (envoy_lifecycle/monitoring/dashboards.py)."""

from __future__ import annotations

from pathlib import Path

from bench.lab.prometheus import Prometheus
from envoy_lifecycle.monitoring.dashboards import CONTROL_PLANE, DRAIN, ENVOY, Panel

DRAIN_TITLES = (
    "Drains in flight",
    "Envoy connections during the drain",
    "Envoy health-check state",
)
KEY_PANELS = [next(p for p in DRAIN.panels if p.title == title) for title in DRAIN_TITLES] + [
    next(p for p in CONTROL_PLANE.panels if p.title == "Envoys connected / behind"),
    next(p for p in ENVOY.panels if p.title == "Responses by class"),
]  # fmt: skip


def _legend(template: str, labels: dict[str, str]) -> str:
    for name, value in labels.items():
        template = template.replace("{{" + name + "}}", value)
    return template


async def render(prometheus: Prometheus, start: float, end: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(KEY_PANELS), 1, sharex=True, figsize=(9, 2.2 * len(KEY_PANELS)))
    for axis, panel in zip(axes, KEY_PANELS, strict=True):
        await _panel(axis, panel, prometheus, start, end)
    axes[-1].set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


async def _panel(
    axis: object, panel: Panel, prometheus: Prometheus, start: float, end: float
) -> None:
    for expr, legend in panel.queries:
        for series in await prometheus.query_range(expr, start, end):
            xs = [float(t) - start for t, _ in series["values"]]
            ys = [float(v) for _, v in series["values"]]
            axis.step(xs, ys, where="post", label=_legend(legend, series["metric"]))  # type: ignore[attr-defined]
    axis.set_title(panel.title, fontsize=9)  # type: ignore[attr-defined]
    axis.legend(fontsize=7, loc="upper right")  # type: ignore[attr-defined]
