"""Training and evaluation curves of run directories, from their ``metrics.jsonl``: as a PNG (matplotlib, the
optional ``plot`` extra) or as a self-contained HTML page drawn by the playground's own canvas plotter.

:func:`curve_series` reads the lines (one per run, split and metric), :func:`plot_curves` draws several runs
overlaid (``smoltrain plot``), :func:`write_run_curves` writes ``RUN/curves.png`` at the end of a training."""

from __future__ import annotations

import html
import importlib.util
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from smoltrain.errors import ConfigError, DataError
from smoltrain.fileio import atomic_write_bytes, atomic_write_text, writing
from smoltrain.runs.run_dir import RunDir

# Metrics drawn when none are asked for, those a run logs: its loss, then what says how good it is.
DEFAULT_METRICS = ("loss", "exact_accuracy", "accuracy", "bits_per_byte")
X_AXES = ("step", "time")
SERIES_KEY = "smoltrain:series"  # PNG text chunk / HTML data attribute: how many lines the file draws


@dataclass
class Series:
    """One line: a metric of one split (train / eval) of one run."""

    run: str
    split: str
    metric: str
    xs: list[float]
    ys: list[float]

    @property
    def label(self) -> str:
        return f"{self.run} {self.split}"


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    path = RunDir(run_dir).metrics
    if not path.is_file():
        raise DataError(f"{run_dir} has no metrics.jsonl: give the directory of a run that has trained")
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill: the rest still plots
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def _wall_times(rows: list[dict[str, Any]]) -> list[float]:
    """Each row's elapsed_s; a row without one (eval rows of older runs) takes the last train row's at or before it."""
    train = sorted((r["step"], r["elapsed_s"]) for r in rows
                   if r.get("split") == "train" and isinstance(r.get("elapsed_s"), (int, float)))
    out = []
    for row in rows:
        if isinstance(row.get("elapsed_s"), (int, float)):
            out.append(float(row["elapsed_s"]))
            continue
        before = [t for step, t in train if step <= row["step"]]
        out.append(before[-1] if before else 0.0)
    return out


def _run_names(run_dirs: list[Path]) -> list[str]:
    names = [path.resolve().name for path in run_dirs]
    return names if len(set(names)) == len(names) else [str(path) for path in run_dirs]


def curve_series(run_dirs: list[Path], metrics: list[str] | None = None, x: str = "step") -> list[Series]:
    """The lines to draw: for each metric, each run and each split that logged it (nonfinite rows aside)."""
    if x not in X_AXES:
        raise ConfigError(f"--x {x}: choose step or time")
    runs = [(name, _rows(path)) for name, path in zip(_run_names(run_dirs), run_dirs, strict=True)]
    logged = {key for _, rows in runs for row in rows for key, value in row.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)}
    logged -= {"step", "elapsed_s", "count"}
    wanted = metrics or [m for m in DEFAULT_METRICS if m in logged]
    unknown = [m for m in wanted if m not in logged]
    if unknown:
        raise ConfigError(f"--metric {unknown[0]}: the runs logged no such metric; they have "
                          f"{', '.join(sorted(logged))}")
    series = []
    for metric in wanted:
        for name, rows in runs:
            times = _wall_times(rows)
            lines: dict[str, Series] = {}
            for row, t in zip(rows, times, strict=True):
                value, split = row.get(metric), row.get("split", "train")
                if split == "nonfinite" or not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                line = lines.setdefault(split, Series(name, split, metric, [], []))
                line.xs.append(float(row["step"]) if x == "step" else t)
                line.ys.append(float(value))
            series += lines.values()
    if not series:
        raise DataError("the runs have no rows to plot yet: plot again once they have logged a step")
    return series


def _x_label(x: str) -> str:
    return "step" if x == "step" else "wall time (s)"


def _png(series: list[Series], x: str, title: str) -> bytes:
    import io

    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    metrics = list(dict.fromkeys(s.metric for s in series))
    figure = Figure(figsize=(6.4 * min(len(metrics), 2), 4.2 * math.ceil(len(metrics) / 2)), layout="constrained")
    axes = figure.subplots(math.ceil(len(metrics) / 2), min(len(metrics), 2), squeeze=False).reshape(-1)
    runs = list(dict.fromkeys(s.run for s in series))
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, metric in zip(axes, metrics, strict=False):
        for s in (s for s in series if s.metric == metric):
            evaluation = s.split != "train"
            ax.plot(s.xs, s.ys, label=s.label, color=colours[runs.index(s.run)], linestyle="--" if evaluation else "-",
                    marker="o" if evaluation or len(s.xs) == 1 else None, markersize=3)
        ax.set_title(metric)
        ax.set_xlabel(_x_label(x))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100, metadata={SERIES_KEY: str(len(series))})
    return out.getvalue()


def _html(series: list[Series], x: str, title: str) -> str:
    plotter = resources.files("smoltrain").joinpath("serve/static/plot.js").read_text(encoding="utf-8")
    metrics = list(dict.fromkeys(s.metric for s in series))
    runs = list(dict.fromkeys(s.run for s in series))  # one colour per run, as in the PNG: splits differ by dashes
    charts = [{"metric": m, "series": [{"name": s.label, "points": list(zip(s.xs, s.ys, strict=True)),
                                        "run": runs.index(s.run), "dashed": s.split != "train",
                                        "dots": s.split != "train"}
                                       for s in series if s.metric == m]} for m in metrics]
    data = json.dumps({"x": x, "charts": charts}).replace("</", "<\\/")  # no "</script>" inside the script
    canvases = "\n".join(f'<canvas class="chart" id="chart-{i}"></canvas>' for i in range(len(charts)))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title or "smoltrain curves")}</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 16px; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 12px; }}
.chart {{ width: 100%; height: 340px; border: 1px solid #d9dde3; border-radius: 8px; }}</style></head>
<body data-series="{len(series)}"><h1 style="font-size:18px">{html.escape(title or "training curves")}</h1>
<div class="charts">
{canvases}
</div>
<script>
{plotter}
</script>
<script>
const DATA = {data};
function draw() {{
  DATA.charts.forEach((chart, i) => SmolPlot.drawChart(document.getElementById("chart-" + i),
    chart.series.map((s) => ({{...s, colour: SmolPlot.PALETTE[s.run % SmolPlot.PALETTE.length]}})),
    {{title: chart.metric, xLabel: DATA.x === "time" ? "wall time" : "step", xIsTime: DATA.x === "time"}}));
}}
draw();
window.addEventListener("resize", draw);
</script>
</body></html>
"""


def plot_curves(run_dirs: list[str | Path], output: str | Path, metrics: list[str] | None = None, x: str = "step",
                title: str = "") -> tuple[Path, list[Series]]:
    """Draw the curves of ``run_dirs`` overlaid into ``output`` (``.png`` or ``.html``); returns it and the lines."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".png", ".html"):
        raise ConfigError(f"--output {output}: the curves are written as .png or .html")
    if suffix == ".png" and not has_matplotlib():
        raise ConfigError("a .png needs matplotlib: pip install 'smoltrain[plot]', or write --output FILE.html")
    series = curve_series([Path(p) for p in run_dirs], metrics, x)
    with writing(output):
        output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        atomic_write_bytes(output, _png(series, x, title))
    else:
        atomic_write_text(output, _html(series, x, title))
    return output, series


def write_run_curves(run_dir: Path) -> Path | None:
    """``RUN/curves.png`` of the run's own metrics, or None when matplotlib is not installed or nothing is logged."""
    if not has_matplotlib() or not RunDir(run_dir).metrics.is_file():
        return None
    try:
        series = curve_series([run_dir])
    except DataError:  # no rows yet (a run stopped before its first step)
        return None
    path = RunDir(run_dir).curves
    atomic_write_bytes(path, _png(series, "step", run_dir.resolve().name))
    return path
