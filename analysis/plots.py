"""The pictures of an ablation: accuracy against cost, and validation curves, from finished runs.

    python analysis/plots.py multirun/2026-11-26/10-00-00 [more folders...] [--baseline none] [--out DIR]

Writes PNG and SVG files into ``--out`` (default: the first folder):

- ``accuracy_vs_gflops``, ``accuracy_vs_params``, ``accuracy_vs_images_per_s``: one point per
  experiment, the summary's rows (mean top-1 over seeds, error bar ± one sample std, none for one
  seed), labelled with the variant, the shown config keys and the seeds
  (``se[placement=pre] optim.lr=0.05 (n=3)``; a label goes right or left of its point and is raised
  where it would hide another label, marker or error bar), one
  colour per backbone, and the Pareto front (no other variant is both more accurate and cheaper, or
  faster) drawn as a grey step line (dashed, dotted, ... by setting): one front per setting (the shown
  config keys, e.g. each ``optim.lr`` of an lr sweep), since modules compete within one recipe. The
  images/s plot needs runs that measured ``train_images_per_s`` (a data set without any is skipped with a
  message) and gives each backbone one panel per hardware the speeds were measured on
  (``speed_hardware``), never one front across machines.
- ``training_curves``: validation top-1 per epoch for each experiment, the mean over seeds as a line
  and the min–max over seeds as a band, read from each run's Lightning log ``csv/metrics.csv``
  (``val/top1``, a fraction) or, where there is none, from the ``history`` in ``results.json``.

With several data sets (or several data/backbone pairs for the curves) each gets its own file,
suffixed with its name. Only completed runs are drawn.
"""
from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox
import numpy as np
from matplotlib.ticker import MaxNLocator, ScalarFormatter
import pandas as pd

from attn_zoo.results import write_atomic
from analysis.summarize import (
    SPEED_KEYS, Scan, experiment_label, folders_to_outputs, is_completed, scan, setting_columns, summarize,
)

# x column, axis label, divisor, file name, whether a larger x is better
TRADEOFFS = [
    ("flops", "GFLOPs per image (2 × MACs)", 1e9, "accuracy_vs_gflops", False),
    ("params", "parameters (M)", 1e6, "accuracy_vs_params", False),
    ("train_images_per_s", "measured training throughput (images/s)", 1.0, "accuracy_vs_images_per_s", True),
]
FORMATS = ("png", "svg")


def slug(text: object) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def save_figure(figure: plt.Figure, out: Path, stem: str) -> list[Path]:
    """PNG and SVG of ``figure``, each written atomically; the figure is closed."""
    paths = []
    for fmt in FORMATS:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight")
        path = out / f"{stem}.{fmt}"
        write_atomic(path, buffer.getvalue())
        paths.append(path)
    plt.close(figure)
    return paths


def pareto_front(cost: np.ndarray, accuracy: np.ndarray, larger_cost_is_better: bool = False) -> np.ndarray:
    """Indices of the points no other point beats on both accuracy and cost, cheapest first."""
    cost = -np.asarray(cost, float) if larger_cost_is_better else np.asarray(cost, float)
    accuracy = np.asarray(accuracy, float)
    order = np.lexsort((-accuracy, cost))  # by cost, then the more accurate first
    front, best = [], -np.inf
    for index in order:
        if np.isfinite(cost[index]) and np.isfinite(accuracy[index]) and accuracy[index] > best:
            front.append(index)
            best = accuracy[index]
    return np.array(front, dtype=int)


def cost_axis(axis: matplotlib.axis.Axis) -> None:
    """At most five ticks, as plain decimals with the digits that tell them apart: variants' costs
    differ in the fourth digit (SE adds 0.01 % of FLOPs), where the default eight six-digit labels
    ran together."""
    axis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=2))
    formatter = ScalarFormatter(useOffset=False)  # an offset ("1e-5+8.184e-2") is unreadable here
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)


def _count_note(row: pd.Series, timed: bool) -> str:
    """`` (n=3)``: the seeds behind a point; on a speed axis also how many of them were timed, where
    fewer (``speed_runs``: `` (n=3, 1 timed)``)."""
    if "n" not in row:
        return ""
    fewer = timed and "speed_runs" in row and 0 < row["speed_runs"] < row["n"]
    return f" (n={row['n']}, {row['speed_runs']} timed)" if fewer else f" (n={row['n']})"


LABEL_OFFSET_PT = 4.0  # a label's corner from its point, in points: right of it, or left where that is clearer


def _draw_tradeoff(axes: plt.Axes, group: pd.DataFrame, column: str, divisor: float, larger_is_better: bool,
                   colour: str) -> list[tuple[float, float, float]]:
    """Draws ``group``'s points, labels and Pareto fronts; returns the points as (x, y, std)."""
    x, y = group[column].to_numpy(float) / divisor, group["top1_mean"].to_numpy(float)
    std = group["top1_std"].to_numpy(float)
    # one seed has no std: no bar (a bar of length 0 would read as seeds that agree)
    axes.errorbar(x, y, yerr=std, fmt="o", color=colour, capsize=3, label="mean ± std over seeds")
    # n on each point: a bar is missing for one seed, and hidden behind the marker for seeds that agree
    settings = setting_columns(group)
    labels = [experiment_label(row, settings) + _count_note(row, timed=column in SPEED_KEYS) for _, row in group.iterrows()]
    for x_value, y_value, label in zip(x, y, labels):
        # the leader line shows only for a label that separate_labels had to raise away from its point
        axes.annotate(label, (x_value, y_value), textcoords="offset points", xytext=(LABEL_OFFSET_PT,) * 2, fontsize=8,
                      arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.6, "shrinkA": 1, "shrinkB": 4})
    cost_axis(axes.xaxis)
    # one front per setting (every differing key but the attention's own: an lr sweep's lrs, a backbone
    # option): modules compete within a recipe and network, and a front across them would pass one
    # setting's point off as another's module beaten
    keys = group["_setting_label"].fillna("").tolist() if "_setting_label" in group else [""] * len(group)
    styles = ["--", ":", "-.", (0, (5, 1, 1, 1))]
    for index, key in enumerate(sorted(set(keys))):
        members = np.array([position for position, other in enumerate(keys) if other == key], dtype=int)
        front = members[pareto_front(x[members], y[members], larger_is_better)]
        if len(front) > 1:
            axes.step(x[front], y[front], where="post", linestyle=styles[index % len(styles)], color="grey",
                      alpha=0.8, label=f"Pareto front {key}".strip())
    return list(zip(x, y, std))


def plot_tradeoff(table: pd.DataFrame, column: str, label: str, divisor: float, larger_is_better: bool,
                  title: str) -> plt.Figure:
    """One panel per backbone (their costs differ by whole factors), variants as points; for a measured
    speed, one panel per backbone and hardware the speeds were measured on (``speed_hardware``): speeds of
    different machines share no axis and no Pareto front."""
    keys = ["backbone", "speed_hardware"] if column in SPEED_KEYS and "speed_hardware" in table else ["backbone"]
    missing = [f"{row['backbone']} {experiment_label(row, setting_columns(table))}"
               for _, row in table[table[column].isna()].iterrows()]
    if missing:  # e.g. seeds timed on different machines: said, not dropped silently
        print(f"{title}: no comparable {column} for {', '.join(missing)}: left out", file=sys.stderr)
    backbones = [(" — ".join(map(str, name)), group[group[column].notna()])
                 for name, group in table.groupby(keys, sort=True, dropna=False)]
    backbones = [(name, group) for name, group in backbones if not group.empty]
    columns = min(3, len(backbones))
    rows = -(-len(backbones) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    points = []
    for index, (backbone, group) in enumerate(backbones):
        axes = grid.flat[index]
        points.append(_draw_tradeoff(axes, group, column, divisor, larger_is_better, colours[index % len(colours)]))
        axes.set_title(backbone)
        axes.set_xlabel(label)
        axes.set_ylabel("validation top-1 %")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="best")
    for axes in list(grid.flat)[len(backbones):]:
        axes.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    for axes, drawn in zip(grid.flat, points):
        separate_labels(axes, drawn)  # after the layout: it fixes how far apart the points are drawn
    return figure


def point_boxes(axes: plt.Axes, points: list[tuple[float, float, float]], half_width_pt: float = 3.0) -> list[Bbox]:
    """The canvas box of each (x, y, std) point: its marker and its bar (± std; none for NaN), as wide
    as the marker and the caps (both 3 points from the centre): what a label must not hide."""
    half_width = half_width_pt * axes.figure.dpi / 72.0
    boxes = []
    for x_value, y_value, std in points:
        reach = 0.0 if np.isnan(std) else std
        (left, low), (right, high) = axes.transData.transform([(x_value, y_value - reach), (x_value, y_value + reach)])
        boxes.append(Bbox.from_extents(left - half_width, low - half_width, right + half_width, high + half_width))
    return boxes


def text_box(label: Annotation, renderer=None) -> Bbox:
    """A label's text on the canvas, without its leader line (Annotation's own extent includes it)."""
    label.get_window_extent(renderer)  # places the text for the current offset
    return Text.get_window_extent(label, renderer)


def _rise_to_clear(label, side: str, blocked: list[Bbox], renderer, gap_px: float) -> tuple[float, float]:
    """Places ``label`` on ``side`` of its point and raises it until it covers nothing in ``blocked``;
    returns how far it sticks out of its axes sideways, in pixels, and how far it rose, in points."""
    points_per_px = 72.0 / label.figure.dpi
    label.set_horizontalalignment("left" if side == "right" else "right")
    label.xyann = (LABEL_OFFSET_PT if side == "right" else -LABEL_OFFSET_PT, LABEL_OFFSET_PT)
    for _ in range(len(blocked) + 1):  # each move clears one box; never more moves than boxes
        box = text_box(label, renderer)
        covered = [other for other in blocked if box.overlaps(other)]
        if not covered:
            break
        offset_x, offset_y = label.xyann
        label.xyann = (offset_x, offset_y + (max(other.y1 for other in covered) - box.y0 + gap_px) * points_per_px)
    box, frame = text_box(label, renderer), label.axes.get_window_extent(renderer)
    return max(0.0, frame.x0 - box.x0) + max(0.0, box.x1 - frame.x1), label.xyann[1] - LABEL_OFFSET_PT


def separate_labels(axes: plt.Axes, points: list[tuple[float, float, float]] = (), gap_px: float = 1.0) -> None:
    """Places each point label where it hides no other label, nor the marker or error bar of another of
    ``points`` ((x, y, std) in data units): variants of equal cost and close accuracy (none and ECA share
    their FLOPs) printed their names over each other, and a label crossed the bar of a point beside it.
    From the lowest point up, a label goes right of its point or left of it, whichever keeps it inside
    the axes (or sticks out less) with the smaller rise to clear what is already there; a raised label
    gets a thin grey line to its point, and labels raised above the axes raise its top to hold them."""
    renderer = axes.figure.canvas.get_renderer()
    for _ in range(3):  # a higher top squeezes the points together: place again, at most twice more
        _place_labels(axes, points, renderer, gap_px)
        frame = axes.get_window_extent(renderer)
        top = max((text_box(label, renderer).y1 for label in axes.texts), default=frame.y1)
        if top <= frame.y1:
            return
        low, high = axes.get_ylim()
        axes.set_ylim(low, high + (top - frame.y1 + gap_px) * (high - low) / frame.height)


def _place_labels(axes: plt.Axes, points: list[tuple[float, float, float]], renderer, gap_px: float) -> None:
    boxes = list(zip([(x_value, y_value) for x_value, y_value, _ in points], point_boxes(axes, list(points))))
    placed: list[Bbox] = []
    for label in sorted(axes.texts, key=lambda text: axes.transData.transform(text.xy)[1]):
        blocked = placed + [box for xy, box in boxes if xy != tuple(label.xy)]
        costs = {side: _rise_to_clear(label, side, blocked, renderer, gap_px) for side in ("left", "right")}
        side = min(("right", "left"), key=costs.get)  # a tie: right
        if side == "left":  # the label was last placed on the right: back to the left
            _rise_to_clear(label, side, blocked, renderer, gap_px)
        rise = costs[side][1]
        if label.arrow_patch is not None:  # a raised label is tied to its point by a thin line
            label.arrow_patch.set_visible(rise > 0)
        placed.append(text_box(label, renderer))


UNKNOWN_DATA = "unknown data"


def plot_tradeoffs(table: pd.DataFrame, out: Path) -> list[Path]:
    written = []
    if table["data"].isna().any():  # a record without a data name: plotted under one, not dropped unseen
        print(f"{int(table['data'].isna().sum())} row(s) name no data set: plotted as '{UNKNOWN_DATA}'", file=sys.stderr)
        table = table.assign(data=table["data"].fillna(UNKNOWN_DATA))
    datasets = sorted(table["data"].unique(), key=str)
    for column, label, divisor, stem, larger_is_better in TRADEOFFS:
        if table[column].notna().sum() == 0:  # e.g. no run measured its speed
            print(f"no run has {column}: skipping {stem}", file=sys.stderr)
            continue
        for data in datasets:
            subset = table[table["data"] == data]
            suffix = f"_{slug(data)}" if len(datasets) > 1 else ""
            if subset[column].notna().sum() == 0:
                print(f"no run on {data} has {column}: skipping {stem + suffix}", file=sys.stderr)
                continue
            figure = plot_tradeoff(subset, column, label, divisor, larger_is_better, f"top-1 vs {label.split(' (')[0]} — {data}")
            written += save_figure(figure, out, stem + suffix)
    return written


def _curve_from_log(metrics: pd.DataFrame, log: Path) -> pd.Series | None:
    """Validation top-1 (%) by epoch from a Lightning CSV log; None (with a message when the log is
    malformed: text, NaN/Inf, a fraction outside [0, 1], fractional epochs) so the caller falls back."""
    if not {"epoch", "val/top1"} <= set(metrics.columns):
        return None
    rows = metrics[metrics["val/top1"].notna()]
    epochs = pd.to_numeric(rows["epoch"], errors="coerce")
    values = pd.to_numeric(rows["val/top1"], errors="coerce")
    if not (np.isfinite(epochs).all() and (epochs == epochs.round()).all() and values.between(0, 1).all()):
        print(f"unusable log {log}: non-numeric, non-finite or out-of-range val/top1 or epoch", file=sys.stderr)
        return None
    by_epoch = values.groupby(epochs.astype(int)).last()
    return pd.Series(by_epoch.to_numpy(float) * 100, index=by_epoch.index + 1, name="top1") if len(by_epoch) else None


def validation_curve(run_folder: Path, history: list | None = None) -> pd.Series:
    """Validation top-1 (%) by epoch (1-based), from the Lightning CSV log, or from the results history
    where that covers more epochs (a log that an older version restarted on a resume holds only the
    epochs after it) or no log is usable."""
    from_history = _curve_from_history(history)
    logs = [run_folder / "csv" / "metrics.csv", *sorted(run_folder.glob("csv/**/metrics.csv"))]
    for log in logs:
        if not log.is_file():
            continue
        try:
            metrics = pd.read_csv(log)
        except (OSError, ValueError, pd.errors.EmptyDataError) as error:
            print(f"unreadable log {log}: {error}", file=sys.stderr)
            continue
        curve = _curve_from_log(metrics, log)
        if curve is not None:
            if len(curve) < len(from_history):
                print(f"log {log} holds {len(curve)} of the {len(from_history)} validated epochs: "
                      "the curve is the results.json history", file=sys.stderr)
                return from_history
            return curve
    return from_history


def _curve_from_history(history: list | None) -> pd.Series:
    """One value per epoch, as the log's: the epoch's last validation (``val_check_interval`` < 1
    validates several times an epoch, a row each)."""
    rows = pd.DataFrame(history or [])
    if not {"epoch", "top1"} <= set(rows.columns):
        return pd.Series(dtype=float, name="top1")
    last = rows.groupby(rows["epoch"].astype(int))["top1"].last()
    return pd.Series(last.to_numpy(float), index=last.index.to_numpy(int) + 1, name="top1")


def seed_curves(curves: list[pd.Series]) -> tuple[pd.DataFrame, list[int]]:
    """The seeds' curves as epochs × seeds, in epoch order, on the epochs every seed has (a mean over
    some of the seeds, beside one over all, would zigzag, and a band of one seed reads as seeds that
    agree); and the epochs left out."""
    by_epoch = pd.concat(curves, axis=1).sort_index()
    complete = by_epoch.notna().all(axis=1)
    return by_epoch[complete], by_epoch.index[~complete].tolist()


def plot_curves(runs: pd.DataFrame, histories: dict[str, list], out: Path) -> list[Path]:
    completed = runs[is_completed(runs)]
    pairs = sorted({(data, backbone) for data, backbone in zip(completed["data"], completed["backbone"])}, key=str)
    written = []
    for data, backbone in pairs:
        subset = completed[(completed["data"] == data) & (completed["backbone"] == backbone)]
        figure, axes = plt.subplots(figsize=(6.4, 4.6))
        drawn = 0
        settings = setting_columns(subset)
        for _, group in subset.groupby(["attention", *settings, "_experiment"], sort=True):
            variant = experiment_label(group.iloc[0], settings)
            curves = [validation_curve(Path(path), histories.get(path)) for path in group["path"]]
            curves = [curve for curve in curves if not curve.empty]
            if not curves:
                continue
            by_epoch, left_out = seed_curves(curves)
            if left_out:
                print(f"{variant} on {data}/{backbone}: epochs {left_out} left out of its curve (not every "
                      "seed has them)", file=sys.stderr)
            if by_epoch.empty:
                continue
            epochs = by_epoch.index.to_numpy()
            line, = axes.plot(epochs, by_epoch.mean(axis=1), marker="o", markersize=3,
                              label=f"{variant} (n={len(curves)})")
            axes.fill_between(epochs, by_epoch.min(axis=1), by_epoch.max(axis=1), color=line.get_color(), alpha=0.2)
            drawn += 1
        if not drawn:
            plt.close(figure)
            print(f"no validation curves for {data}/{backbone}", file=sys.stderr)
            continue
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel("validation top-1 % (mean, band: min–max over seeds)")
        axes.set_title(f"validation top-1 — {backbone} on {data}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        suffix = f"_{slug(data)}_{slug(backbone)}" if len(pairs) > 1 else ""
        written += save_figure(figure, out, "training_curves" + suffix)
    return written


def make_plots(folders: list[Path], out: Path, baseline: str | None = "none") -> list[Path]:
    found = scan(folders)
    return plot_scan(found, summarize(found.runs, baseline), out)


def plot_scan(found: Scan, table: pd.DataFrame, out: Path) -> list[Path]:
    """Every plot for runs already read (``found``) and summarised (``table``); the paths written."""
    if table.empty:
        print("no completed runs: nothing to plot", file=sys.stderr)
        return []
    histories = {path: record.get("history") for path, record in zip(found.runs["path"], found.records)}
    return plot_tradeoffs(table, out) + plot_curves(found.runs, histories, out)


def main(argv: list[str] | None = None) -> int:
    return folders_to_outputs(__doc__, argv, make_plots)


if __name__ == "__main__":
    sys.exit(main())
