import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis.plots as plots_module
from analysis.plots import make_plots, pareto_front, validation_curve
from tests.helpers import ROOT, fabricate_run

TRADEOFF_STEMS = ["accuracy_vs_gflops", "accuracy_vs_params"]


def _sweep(root: Path, with_speed: bool) -> Path:
    variants = [("none", 0.0, 1000, 5000.0), ("se", 1.0, 1100, 3500.0), ("eca", 0.5, 1001, 4500.0)]
    for name, offset, params, speed in variants:
        for seed in range(2):
            curve = [40 + offset + 10 * epoch + seed for epoch in range(3)]
            speed_fields = {"train_images_per_s": speed + seed} if with_speed else {}
            fabricate_run(root / f"{name}{seed}", name, seed, curve[-1], params=params, flops=2 * params,
                          curve=curve, **speed_fields)
    fabricate_run(root / "failed", "se", 5, 10.0, status="failed")
    return root


def _assert_images(out: Path, stems: list[str]) -> None:
    for stem in stems:
        png, svg = out / f"{stem}.png", out / f"{stem}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert png.stat().st_size > 1000
        assert "<svg" in svg.read_text()[:2000], stem


def test_pareto_front_keeps_only_undominated_points():
    cost = np.array([1.0, 2.0, 3.0, 2.5, 4.0])
    accuracy = np.array([70.0, 72.0, 71.0, 74.0, 74.0])
    # 3.0 (71 %) is beaten by 2.0 (72 %), 4.0 ties 2.5 in accuracy but costs more
    assert pareto_front(cost, accuracy).tolist() == [0, 1, 3]
    # throughput: more is better, so the fastest point leads
    speed = np.array([5000.0, 3500.0, 4500.0])
    assert pareto_front(speed, np.array([70.0, 71.0, 72.0]), larger_cost_is_better=True).tolist() == [0, 2]


def test_every_plot_is_written_with_speed(tmp_path):
    out = tmp_path / "plots"
    written = make_plots([_sweep(tmp_path / "sweep", with_speed=True)], out)
    stems = [*TRADEOFF_STEMS, "accuracy_vs_images_per_s", "training_curves"]
    assert sorted(path.name for path in written) == sorted(f"{stem}.{ext}" for stem in stems for ext in ("png", "svg"))
    _assert_images(out, stems)


def test_speed_plot_is_skipped_with_a_message_when_no_run_measured_it(tmp_path, capsys):
    out = tmp_path / "plots"
    make_plots([_sweep(tmp_path / "sweep", with_speed=False)], out)
    assert "skipping accuracy_vs_images_per_s" in capsys.readouterr().err
    assert not (out / "accuracy_vs_images_per_s.png").exists()
    _assert_images(out, [*TRADEOFF_STEMS, "training_curves"])


def test_validation_curve_reads_the_csv_log_as_percent_and_falls_back_to_history(tmp_path):
    run = fabricate_run(tmp_path / "run", curve=[30.0, 45.5])
    curve = validation_curve(run)
    assert curve.index.tolist() == [1, 2] and curve.tolist() == pytest.approx([30.0, 45.5])
    (run / "csv" / "metrics.csv").unlink()
    history = [{"epoch": 0, "top1": 12.5, "top5": 50.0}]
    assert validation_curve(run, history).tolist() == [12.5]
    assert validation_curve(run).empty


def test_a_log_covering_fewer_epochs_than_the_history_gives_way_to_it(tmp_path, capsys):
    """An older version restarted the log on a resume: the log held the last epochs only, and the curve
    was those epochs alone."""
    run = fabricate_run(tmp_path / "run", curve=[30.0, 45.5, 50.0])
    history = [{"epoch": epoch, "top1": value} for epoch, value in enumerate([30.0, 45.5, 50.0])]
    log = run / "csv" / "metrics.csv"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], lines[-1]]) + "\n")  # the last epoch only
    assert validation_curve(run, history).tolist() == [30.0, 45.5, 50.0]
    assert "holds 1 of the 3 validated epochs" in capsys.readouterr().err


def test_a_history_of_several_validations_an_epoch_gives_one_point_an_epoch(tmp_path):
    """val_check_interval < 1 validates twice an epoch, a history row each: the history always beat the
    log (one row an epoch) and gave two values at one epoch."""
    run = fabricate_run(tmp_path / "run", curve=[30.0, 50.0])
    history = [{"epoch": 0, "top1": 20.0}, {"epoch": 0, "top1": 30.0}, {"epoch": 1, "top1": 40.0}, {"epoch": 1, "top1": 50.0}]
    for _ in range(2):  # beside the log, then alone
        curve = validation_curve(run, history)
        assert curve.index.tolist() == [1, 2] and curve.tolist() == [30.0, 50.0]
        (run / "csv" / "metrics.csv").unlink(missing_ok=True)


def test_seed_curves_keep_the_epochs_every_seed_has_in_order():
    """Epochs one seed lacked went to the end of the frame (a line back from the last epoch to them)
    and were averaged over the seeds that had them."""
    from analysis.plots import seed_curves

    full = pd.Series([10.0, 20.0, 30.0, 40.0], index=[1, 2, 3, 4])
    part = pd.Series([25.0, 35.0], index=[3, 4])
    by_epoch, left_out = seed_curves([part, full])
    assert by_epoch.index.tolist() == [3, 4] and left_out == [1, 2]
    assert by_epoch.mean(axis=1).tolist() == [27.5, 37.5]


def test_one_file_per_backbone_pair_for_curves(tmp_path):
    sweep = _sweep(tmp_path / "sweep", with_speed=False)
    fabricate_run(sweep / "deep", "none", 0, 60.0, backbone="resnet56", curve=[50.0, 60.0])
    names = {path.name for path in make_plots([sweep], tmp_path / "plots")}
    assert {"training_curves_embedded_resnet20.png", "training_curves_embedded_resnet56.png"} <= names


def test_cli(tmp_path):
    sweep = _sweep(tmp_path / "sweep", with_speed=False)
    completed = subprocess.run([sys.executable, str(ROOT / "analysis" / "plots.py"), str(sweep)],
                               capture_output=True, text=True, check=True)
    assert str(sweep / "training_curves.svg") in completed.stdout
    assert (sweep / "accuracy_vs_params.png").stat().st_size > 1000


def _placement_sweep(root: Path) -> Path:
    """se at two placements and two learning rates, two seeds each: four experiments."""
    for placement, params in (("standard", 278_346), ("pre", 277_442)):
        for lr in (0.1, 0.05):
            for seed in range(2):
                fabricate_run(root / f"{placement}{lr}_{seed}", "se", seed, 50.0 + seed + 10 * lr, params=params,
                              flops=81_842_176 + params, curve=[40.0, 50.0 + seed],
                              settings={"backbone.placement": placement, "optim.lr": lr})
    return root


def test_points_and_curves_are_labelled_by_experiment(tmp_path, monkeypatch):
    from analysis.plots import plot_curves, plot_tradeoff
    from analysis.summarize import scan, summarize

    found = scan([_placement_sweep(tmp_path / "sweep")])
    table = summarize(found.runs)
    figure = plot_tradeoff(table, "params", "parameters (M)", 1e6, False, "t")
    labels = sorted(text.get_text().removesuffix(" (n=2)") for text in figure.axes[0].texts)
    assert labels == sorted(f"se[placement={p}] optim.lr={lr}" for p in ("standard", "pre") for lr in ("0.1", "0.05"))
    assert all(text.get_text().endswith(" (n=2)") for text in figure.axes[0].texts)
    captured = {}  # the curves' figure, kept open instead of written, to read its legend
    monkeypatch.setattr(plots_module, "save_figure", lambda fig, out, stem: captured.setdefault(stem, fig) and [])
    plot_curves(found.runs, {}, tmp_path / "plots")
    legend = [text.get_text() for text in captured["training_curves"].axes[0].get_legend().get_texts()]
    assert sorted(legend) == sorted(f"{label} (n=2)" for label in labels)


def _visible_tick_labels(axes):
    low, high = axes.get_xlim()
    return [label for label in axes.get_xticklabels() if low <= label.get_position()[0] <= high and label.get_text()]


def test_gflops_tick_labels_are_few_distinct_and_apart():
    from analysis.plots import plot_tradeoff

    # resnet20 without attention, with SE and with ECA: FLOPs differ in the fifth digit
    table = pd.DataFrame({"backbone": ["resnet20"] * 3, "attention": ["none", "se", "eca"],
                          "flops": [81_842_176, 81_852_416, 81_843_000], "top1_mean": [40.0, 41.0, 42.0],
                          "top1_std": [1.0, 1.0, 1.0]})
    figure = plot_tradeoff(table, "flops", "GFLOPs", 1e9, False, "t")
    figure.canvas.draw()
    axes = figure.axes[0]
    labels = _visible_tick_labels(axes)
    texts = [label.get_text() for label in labels]
    assert 2 <= len(labels) <= 5 and len(set(texts)) == len(texts), texts
    assert axes.xaxis.get_offset_text().get_text() == ""  # plain decimals, no "1e-5+8.184e-2"
    assert all(float(text) == pytest.approx(label.get_position()[0], abs=1e-9) for text, label in zip(texts, labels))
    boxes = sorted((box.x0, box.x1) for box in (label.get_window_extent() for label in labels))
    gaps = [right[0] - left[1] for left, right in zip(boxes, boxes[1:])]
    assert min(gaps) >= 20, gaps  # pixels of space between neighbouring labels


def test_a_data_set_without_speeds_is_skipped_beside_one_with_them(tmp_path, capsys):
    """Two data sets, speeds on one: the other's images/s plot is skipped with a message (it divided by
    zero panels and stopped the plots and the HTML report)."""
    _sweep(tmp_path / "sweep" / "embedded", with_speed=True)
    fabricate_run(tmp_path / "sweep" / "other", "none", 0, 60.0, data="cifar100")
    out = tmp_path / "plots"
    make_plots([tmp_path / "sweep"], out)
    assert "no run on cifar100 has train_images_per_s: skipping accuracy_vs_images_per_s_cifar100" in capsys.readouterr().err
    _assert_images(out, ["accuracy_vs_images_per_s_embedded", "accuracy_vs_gflops_cifar100"])


def test_rows_without_a_data_name_are_plotted_under_one_and_said(tmp_path, capsys):
    """A record whose data name is null was dropped from every trade-off plot without a word."""
    _sweep(tmp_path / "sweep" / "embedded", with_speed=False)
    fabricate_run(tmp_path / "sweep" / "nameless", "none", 0, 60.0, data=None)
    out = tmp_path / "plots"
    make_plots([tmp_path / "sweep"], out)
    assert "1 row(s) name no data set: plotted as 'unknown data'" in capsys.readouterr().err
    _assert_images(out, ["accuracy_vs_gflops_embedded", "accuracy_vs_gflops_unknown-data"])


def test_speeds_from_two_machines_get_a_panel_each(tmp_path, capsys):
    from analysis.plots import plot_tradeoff
    from analysis.summarize import scan, summarize

    for seed in range(2):
        for name, speed, device in (("none", 1000.0, "GPU A"), ("se", 500.0, "GPU B"), ("eca", 900.0, "GPU B"),
                                    ("cbam", 400.0, f"GPU {'AB'[seed]}")):
            fabricate_run(tmp_path / f"{name}{seed}", name, seed, 90.0 + seed, train_images_per_s=speed,
                          hardware=[{"device": device, "processes": 1}])
    table = summarize(scan([tmp_path]).runs)
    figure = plot_tradeoff(table, "train_images_per_s", "images/s", 1.0, True, "t")
    panels = {axes.get_title(): sorted(text.get_text() for text in axes.texts) for axes in figure.axes if axes.get_visible()}
    assert panels == {"resnet20 — GPU A": ["none (n=2)"], "resnet20 — GPU B": ["eca (n=2)", "se (n=2)"]}
    # cbam's seeds ran on two machines: it has no speed, and the plot says so instead of dropping it silently
    assert "no comparable train_images_per_s for resnet20 cbam: left out" in capsys.readouterr().err


def test_a_single_seed_point_has_no_error_bar(tmp_path):
    from analysis.plots import plot_tradeoff
    from analysis.summarize import scan, summarize

    fabricate_run(tmp_path / "none0", "none", 0, 90.0)
    fabricate_run(tmp_path / "se0", "se", 0, 91.0)
    fabricate_run(tmp_path / "se1", "se", 1, 93.0)
    figure = plot_tradeoff(summarize(scan([tmp_path]).runs), "params", "parameters (M)", 1e6, False, "t")
    segments = [segment for collection in figure.axes[0].collections for segment in collection.get_segments()
                if len(segment) == 2 and np.isfinite(segment).all()]
    lengths = [round(abs(segment[1][1] - segment[0][1]), 3) for segment in segments]
    assert lengths == [round(2 * np.sqrt(2), 3)]  # se's ± std; none (one seed) has no bar


@pytest.mark.parametrize("key, values", [("optim.lr", (0.1, 0.05)), ("backbone.shortcut", ("projection", "pad"))])
def test_each_setting_gets_its_own_pareto_front(tmp_path, key, values):
    """An lr sweep's points shared one front: lr=0.05's modules never got one (lr=0.1 beat them all);
    a backbone option goes into the variant label, not a column, and must split the fronts too."""
    from analysis.plots import plot_tradeoff
    from analysis.summarize import scan, summarize

    for value, accuracies in zip(values, ((90.0, 91.0), (80.0, 85.0))):
        for (name, params), top1 in zip((("none", 1000), ("se", 1100)), accuracies):
            for seed in range(2):
                fabricate_run(tmp_path / f"{name}{value}_{seed}", name, seed, top1 + seed, params=params,
                              flops=2 * params, settings={key: value})
    figure = plot_tradeoff(summarize(scan([tmp_path]).runs), "params", "parameters (M)", 1e6, False, "t")
    fronts = {line.get_label(): [round(y, 2) for y in line.get_ydata()] for line in figure.axes[0].get_lines()
              if line.get_label().startswith("Pareto")}
    assert fronts == {f"Pareto front {key}={values[0]}": [90.5, 91.5], f"Pareto front {key}={values[1]}": [80.5, 85.5]}


def test_placements_of_a_module_share_one_front_with_the_one_network_without_attention(tmp_path):
    """SE table 14: summarize compares SE at every placement with the one none run; the plot drew a
    front per placement, so SE-PRE and SE-POST had none and never met the baseline's."""
    from analysis.plots import plot_tradeoff
    from analysis.summarize import scan, summarize

    fabricate_run(tmp_path / "none", "none", 0, 90.0, params=1000, flops=2000)
    for placement, top1, params in (("standard", 91.0, 1100), ("pre", 92.0, 1200), ("post", 89.0, 1150)):
        fabricate_run(tmp_path / placement, "se", 0, top1, params=params, flops=2 * params,
                      settings={"backbone.placement": placement})
    figure = plot_tradeoff(summarize(scan([tmp_path]).runs), "params", "parameters (M)", 1e6, False, "t")
    fronts = {line.get_label(): [round(y, 2) for y in line.get_ydata()] for line in figure.axes[0].get_lines()
              if line.get_label().startswith("Pareto")}
    assert fronts == {"Pareto front": [90.0, 91.0, 92.0]}


def test_labels_of_equal_cost_and_close_accuracy_do_not_overlap():
    """none and ECA share their FLOPs: with accuracies 0.02 points apart on a one-point axis their
    labels printed over each other."""
    from analysis.plots import plot_tradeoff, text_box

    table = pd.DataFrame({"backbone": ["resnet20"] * 4, "attention": ["none", "eca", "se", "cbam"],
                          "flops": [81_628_160, 81_628_160, 81_640_000, 81_700_000],
                          "top1_mean": [86.92, 86.94, 87.07, 87.40], "top1_std": [0.04, 0.03, 0.17, 0.37]})
    figure = plot_tradeoff(table, "flops", "GFLOPs", 1e9, False, "t")
    figure.canvas.draw()
    boxes = [text_box(text) for text in figure.axes[0].texts]
    assert len(boxes) == 4
    overlapping = [(a, b) for a in range(4) for b in range(a + 1, 4) if boxes[a].overlaps(boxes[b])]
    assert not overlapping, overlapping
    # each label still starts beside its own point, right or left of it, only raised
    for text in figure.axes[0].texts:
        assert abs(text.xyann[0]) == 4 and text.xyann[1] >= 4


def test_a_label_hides_no_other_points_marker_or_error_bar():
    """The CPU short table's GFLOPs plot: SE's bar (± 0.17) stands two pixels right of none and ECA,
    whose labels, printed rightwards, crossed it; leftwards they left the axes."""
    from matplotlib.transforms import Bbox

    from analysis.plots import plot_tradeoff, text_box

    table = pd.DataFrame({"backbone": ["resnet20"] * 4, "attention": ["none", "eca", "se", "cbam"],
                          "flops": [81_628_160, 81_630_176, 81_638_912, 82_425_856],
                          "top1_mean": [86.92, 87.10, 87.07, 86.83], "top1_std": [0.04, 0.31, 0.17, 0.26]})
    figure = plot_tradeoff(table, "flops", "GFLOPs", 1e9, False, "t")
    figure.canvas.draw()
    axes = figure.axes[0]
    cap = 3 * figure.dpi / 72  # the caps' and markers' half width: 3 points
    ends = [axes.transData.transform([(x, y - std), (x, y + std)])
            for x, y, std in zip(table["flops"] / 1e9, table["top1_mean"], table["top1_std"])]
    bars = [Bbox.from_extents(low[0] - cap, low[1] - cap, high[0] + cap, high[1] + cap) for low, high in ends]
    labels = {text.get_text().split(" ")[0]: text for text in axes.texts}
    for index, name in enumerate(table["attention"]):
        box = text_box(labels[name])
        hidden = [table["attention"][other] for other, bar in enumerate(bars) if other != index and box.overlaps(bar)]
        assert not hidden, (name, hidden)
        assert abs(labels[name].xyann[0]) == 4
        # beside its point, or raised and tied to it by a line
        assert labels[name].xyann[1] == 4 or labels[name].arrow_patch.get_visible(), name
        assert labels[name].xyann[1] > 4 or not labels[name].arrow_patch.get_visible(), name
        assert axes.get_window_extent().x0 <= box.x0 and box.x1 <= axes.get_window_extent().x1, name  # not cut off
    boxes = [text_box(text) for text in axes.texts]
    assert not [(a, b) for a in range(4) for b in range(a + 1, 4) if boxes[a].overlaps(boxes[b])]


def test_labels_raised_above_the_axes_raise_its_top_instead():
    """Five variants of one cost and nearly one accuracy, the highest points of the panel: their stacked
    labels rose through the axes' top into the title."""
    from analysis.plots import plot_tradeoff, text_box

    table = pd.DataFrame({"backbone": ["resnet20"] * 6, "attention": ["none", "se", "eca", "ge", "gc", "srm"],
                          "flops": [1e9] * 5 + [1.5e9], "top1_mean": [90.0, 90.01, 90.02, 90.03, 90.04, 80.0],
                          "top1_std": [0.0] * 5 + [0.5]})
    figure = plot_tradeoff(table, "flops", "GFLOPs", 1e9, False, "t")
    figure.canvas.draw()
    axes = figure.axes[0]
    frame, boxes = axes.get_window_extent(), [text_box(text) for text in axes.texts]
    assert all(frame.y0 <= box.y0 and box.y1 <= frame.y1 + 0.5 for box in boxes), (frame, boxes)
    assert not [(a, b) for a in range(6) for b in range(a + 1, 6) if boxes[a].overlaps(boxes[b])]


def test_a_speed_point_says_how_many_of_its_runs_were_timed():
    """Its table cell said "1,510 (2 of 3)"; the plot's point said n=3 alone."""
    from analysis.plots import plot_tradeoff

    table = pd.DataFrame({"backbone": ["resnet20"] * 2, "attention": ["none", "se"], "n": [3, 3],
                          "train_images_per_s": [1600.0, 1510.0], "speed_runs": [3, 2],
                          "top1_mean": [90.0, 91.0], "top1_std": [0.1, 0.2]})
    texts = [text.get_text() for text in plot_tradeoff(table, "train_images_per_s", "img/s", 1.0, True, "t").axes[0].texts]
    assert sorted(texts) == ["none (n=3)", "se (n=3, 2 timed)"]
    texts = [text.get_text() for text in plot_tradeoff(table.assign(flops=1e9), "flops", "GFLOPs", 1e9, False, "t").axes[0].texts]
    assert sorted(texts) == ["none (n=3)", "se (n=3)"]  # accuracy against cost: every seed counts


def test_a_users_matplotlibrc_does_not_reach_the_tests(tmp_path):
    """A user's matplotlibrc changed the font the label-placement tests measure, and they failed;
    conftest points matplotlib at its own, for subprocesses too."""
    (tmp_path / "matplotlibrc").write_text("font.size: 26\n")
    shown = subprocess.run([sys.executable, "-c", "import matplotlib; print(matplotlib.rcParams['font.size'])"],
                           env={**os.environ, "MPLCONFIGDIR": str(tmp_path)}, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "10.0"
