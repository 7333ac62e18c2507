"""Summarise finished runs: one row per (data, backbone, attention variant), mean ± std over seeds,
and each variant's difference from the baseline with a 95 % interval and Welch's t-test.

    python analysis/summarize.py multirun/2026-11-26/10-00-00 [more folders...] [--baseline none] [--out DIR]

Reads every ``results.json`` beneath the folders (the contract written by training; this script
never imports the training code), prints a markdown table and writes ``summary.csv``,
``summary.md``, ``summary.tex`` and ``runs.csv`` (one row per run) into ``--out`` (default: the
first folder), each atomically.

Columns (``summary.csv``):

- ``n``: completed runs (seeds); ``top1_mean``/``top1_std``: final-epoch validation top-1 in %,
  mean and sample standard deviation (ddof=1; empty for one seed); ``top5_mean``.
- ``delta_top1``: top-1 mean minus the baseline's mean (same data and backbone);
  ``delta_top1_low``/``delta_top1_high``: its 95 % Welch interval
  (Δ ± t₀.₉₇₅(ν)·√(s₁²/n₁ + s₂²/n₂), ν by Welch–Satterthwaite); ``p_value``: Welch's two-sided
  t-test (``scipy.stats.ttest_ind(equal_var=False)``). Both need two seeds on each side.
- ``params``, ``flops`` (2 × MACs per image), and, where runs measured them,
  ``train_images_per_s`` and ``inference_latency_ms`` (means over seeds); each with a
  ``*_delta_pct`` column: 100 · (variant / baseline − 1).

Runs that are not ``completed`` (failed, still running) are listed apart and never averaged in; a
corrupt, empty or missing ``results.json`` is reported by path and skipped.

``--wandb ENTITY/PROJECT`` adds the runs of a wandb project (read with wandb's public API; see
``wandb_records`` for how a wandb run maps onto results.json's keys).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from attn_zoo.results import write_atomic

GROUP_KEYS = ["data", "backbone", "attention"]
SPEED_KEYS = ["train_images_per_s", "inference_latency_ms"]
COST_KEYS = ["params", "flops", *SPEED_KEYS]
RUN_COLUMNS = [
    *GROUP_KEYS, "attention_name", "seed", "status", "top1", "top5", "best_top1", "params", "flops",
    *SPEED_KEYS, "epochs", "wall_time_s", "error", "wandb_url", "path",
]
SUMMARY_COLUMNS = [
    *GROUP_KEYS, "n", "top1_mean", "top1_std", "top5_mean",
    "delta_top1", "delta_top1_low", "delta_top1_high", "p_value",
    *[column for key in COST_KEYS for column in (key, f"{key}_delta_pct")],
    "wandb",
]
# Markers of a run folder that should hold a results.json (Hydra's job folder, the run log, the CSV log)
RUN_FOLDER_MARKERS = (".hydra", "run.log", "csv/metrics.csv")


@dataclass
class Scan:
    """What lies beneath the folders: one row per readable run, and the paths that could not be read."""

    runs: pd.DataFrame
    records: list[dict] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def _read(path: Path) -> tuple[dict | None, str | None]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        return None, f"unreadable results.json ({error})"
    if not text.strip():
        return None, "empty results.json"
    try:
        record = json.loads(text)
    except ValueError as error:
        return None, f"unreadable results.json (corrupt JSON: {error})"
    if not isinstance(record, dict) or record.get("schema") != 1:
        return None, "unusable results.json (not schema 1)"
    return record, None


def _number(value) -> float:
    """A float, or NaN for anything that is not a finite-or-infinite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _row(record: dict, folder: Path | str) -> dict:
    return {
        "data": record.get("data"),
        "backbone": record.get("backbone"),
        "attention": record.get("attention_variant", record.get("attention")),
        "attention_name": record.get("attention"),
        "seed": record.get("seed"),
        "status": record.get("status"),
        "top1": _number(record.get("top1")),
        "top5": _number(record.get("top5")),
        "best_top1": _number(record.get("best_top1")),
        "params": _number(record.get("params")),
        "flops": _number(record.get("flops")),
        **{key: _number(record.get(key)) for key in SPEED_KEYS},
        "epochs": record.get("epochs"),
        "wall_time_s": _number(record.get("wall_time_s")),
        "error": record.get("error"),
        "wandb_url": record.get("wandb_url"),
        "path": str(folder),
    }


def _run_folders_without_results(folder: Path) -> list[Path]:
    marked = {marker_path.parent if marker != "csv/metrics.csv" else marker_path.parent.parent
              for marker in RUN_FOLDER_MARKERS for marker_path in folder.rglob(marker)}
    return sorted(path for path in marked if not (path / "results.json").exists())


def scan(folders: list[Path], extra: list[tuple[dict, str]] = ()) -> Scan:
    """Read every results.json beneath ``folders`` (and take ``extra`` (record, origin) pairs, such as
    wandb runs); report and skip the ones that cannot be used."""
    rows = [_row(record, origin) for record, origin in extra]
    records = [record for record, _ in extra]
    problems = []
    seen: set[Path] = set()
    for folder in folders:
        for path in sorted(Path(folder).rglob("results.json")):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            record, problem = _read(path)
            if problem:
                problems.append((str(path), problem))
                continue
            rows.append(_row(record, path.parent))
            records.append(record)
        for run_folder in _run_folders_without_results(Path(folder)):
            problems.append((str(run_folder / "results.json"), "missing results.json"))
    for path, problem in problems:
        print(f"skipping {problem}: {path}", file=sys.stderr)
    return Scan(pd.DataFrame(rows, columns=RUN_COLUMNS), records, problems)


RESULT_STATUSES = ("completed", "diverged", "failed", "interrupted", "running")
# the results.json keys a run copies into its wandb summary (attn_zoo/train.py, WANDB_SUMMARY_KEYS)
WANDB_SUMMARY_KEYS = ["attention_variant", "top1", "top5", "best_top1", "params", "flops", "epochs", "wall_time_s",
                      "train_images_per_s"]


def _nested(flat: dict) -> dict:
    """A run's wandb config (the resolved config with dotted keys) nested again, as results.json holds it."""
    nested: dict = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
    return nested


def _section(config: dict, section: str) -> dict:
    value = config.get(section)
    return value if isinstance(value, dict) else {}


def _wandb_status(state: str, summary: dict) -> str:
    """The status the run wrote (its summary's ``status``, as in results.json); a run that wrote none
    (killed, or not an attn_zoo run) counts as failed, one that wandb shows running as running."""
    if state in ("running", "pending"):
        return "running"
    status = summary.get("status")
    return status if status in RESULT_STATUSES else "failed"


def wandb_records(project: str, api=None) -> list[tuple[dict, str]]:
    """(results.json-shaped record, ``wandb:<project>/<run id>``) per run of a wandb project.

    Reads exactly what ``attn_zoo.train`` writes: the run config is the resolved config with dotted keys
    (``data.name``, ``backbone.name``, ``attention.name``, ``seed``, ...; nested again here as
    ``config``), the summary holds results.json's ``status``, ``attention_variant``, accuracies (%),
    params, FLOPs, epochs and speeds. ``api`` is for tests; by default ``wandb.Api()`` (wandb is
    imported only here).
    """
    if api is None:
        import wandb

        api = wandb.Api()
    records = []
    for run in api.runs(project):
        # summary_metrics is the plain dict behind run.summary in wandb's public API
        config, summary = _nested(dict(run.config)), dict(getattr(run, "summary_metrics", None) or run.summary)
        status = _wandb_status(run.state, summary)
        record = {key: summary.get(key) for key in WANDB_SUMMARY_KEYS}
        record.update(
            schema=1, status=status, seed=config.get("seed"), config=config, wandb_url=getattr(run, "url", None),
            **{section: _section(config, section).get("name") for section in ("data", "backbone", "attention")},
            error=None if status in ("completed", "running") else f"{status} (wandb state: {run.state})",
        )
        record["attention_variant"] = record["attention_variant"] or record["attention"]
        records.append((record, f"wandb:{project}/{run.id}"))
    return records


def load_runs(folders: list[Path]) -> pd.DataFrame:
    """One row per readable results.json beneath ``folders``; ``attention`` is the variant label."""
    return scan(folders).runs


def is_completed(runs: pd.DataFrame) -> pd.Series:
    """Completed runs with a final accuracy: the only ones averaged."""
    return (runs["status"] == "completed") & runs["top1"].notna()


def welch(variant: np.ndarray, baseline: np.ndarray) -> tuple[float, float, float, float]:
    """Difference of means, its 95 % Welch interval and Welch's two-sided p-value (NaN where undefined)."""
    variant, baseline = np.asarray(variant, float), np.asarray(baseline, float)
    delta = variant.mean() - baseline.mean()
    if len(variant) < 2 or len(baseline) < 2:
        return delta, math.nan, math.nan, math.nan
    variance_v, variance_b = variant.var(ddof=1) / len(variant), baseline.var(ddof=1) / len(baseline)
    standard_error = math.sqrt(variance_v + variance_b)
    if standard_error == 0:
        return delta, math.nan, math.nan, math.nan
    try:
        from scipy import stats
    except ImportError:
        print("scipy is not installed: no intervals or p-values", file=sys.stderr)
        return delta, math.nan, math.nan, math.nan
    dof = (variance_v + variance_b) ** 2 / (
        variance_v**2 / (len(variant) - 1) + variance_b**2 / (len(baseline) - 1)
    )
    half_width = stats.t.ppf(0.975, dof) * standard_error
    p_value = stats.ttest_ind(variant, baseline, equal_var=False).pvalue
    return delta, delta - half_width, delta + half_width, float(p_value)


def _percent_change(value: float, reference: float) -> float:
    if not (np.isfinite(value) and np.isfinite(reference)) or reference == 0:
        return math.nan
    return 100.0 * (value / reference - 1.0)


def summarize(runs: pd.DataFrame, baseline: str | None = "none") -> pd.DataFrame:
    """Aggregate completed runs per (data, backbone, variant) and compare each with ``baseline``."""
    completed = runs[is_completed(runs)]
    if completed.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    grouped = completed.groupby(GROUP_KEYS, sort=True, dropna=False)
    table = grouped.agg(
        n=("top1", "size"),
        top1_mean=("top1", "mean"),
        top1_std=("top1", "std"),
        top5_mean=("top5", "mean"),
        params=("params", "first"),
        flops=("flops", "first"),
        **{key: (key, "mean") for key in SPEED_KEYS},
    ).reset_index()
    accuracies = {key: group["top1"].to_numpy() for key, group in grouped}
    comparisons = []
    for _, row in table.iterrows():
        reference_key = (row["data"], row["backbone"], baseline)
        reference = table[(table["data"] == row["data"]) & (table["backbone"] == row["backbone"])
                          & (table["attention"] == baseline)]
        comparison = dict.fromkeys(["delta_top1", "delta_top1_low", "delta_top1_high", "p_value"], math.nan)
        comparison.update({f"{key}_delta_pct": math.nan for key in COST_KEYS})
        if not reference.empty:
            key = (row["data"], row["backbone"], row["attention"])
            if key == reference_key:  # the baseline itself: Δ 0, no test of a sample against itself
                comparison.update(delta_top1=0.0)
            else:
                delta, low, high, p_value = welch(accuracies[key], accuracies[reference_key])
                comparison.update(delta_top1=delta, delta_top1_low=low, delta_top1_high=high, p_value=p_value)
            for cost in COST_KEYS:
                comparison[f"{cost}_delta_pct"] = _percent_change(row[cost], reference.iloc[0][cost])
        comparisons.append(comparison)
    table = pd.concat([table, pd.DataFrame(comparisons, index=table.index)], axis=1)
    table["wandb"] = [_wandb_links(group) for _, group in grouped]
    table["_after_baseline"] = table["attention"] != baseline  # the baseline leads its block
    table = table.sort_values(["data", "backbone", "_after_baseline", "attention"], kind="stable")
    return table[SUMMARY_COLUMNS].reset_index(drop=True)


def _wandb_links(group: pd.DataFrame) -> str:
    """Markdown links to the group's wandb runs, one per seed (empty when none was logged online)."""
    return " ".join(
        f"[s{seed}]({url})" for seed, url in zip(group["seed"], group["wandb_url"]) if isinstance(url, str) and url
    )


# ---------------------------------------------------------------- presentation


def _fmt(value: float, pattern: str, empty: str = "") -> str:
    return pattern.format(value) if pd.notna(value) else empty


def _signed(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}".replace("-", "−") if pd.notna(value) else ""


def _signed_percent(value: float) -> str:
    """Three significant digits, so SE's +0.0132 % of FLOPs does not print as +0.0."""
    return f"{value:+.3g}".replace("-", "−") if pd.notna(value) else ""


def _delta_cell(row: pd.Series, baseline: str | None) -> str:
    if row["attention"] == baseline:
        return "baseline"
    if pd.isna(row["delta_top1"]):
        return ""
    interval = (
        f" [{_signed(row['delta_top1_low'])}, {_signed(row['delta_top1_high'])}]"
        if pd.notna(row["delta_top1_low"]) else ""
    )
    return _signed(row["delta_top1"]) + interval


def _p_cell(value: float) -> str:
    if pd.isna(value):
        return ""
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def presentation(table: pd.DataFrame, baseline: str | None = "none") -> pd.DataFrame:
    """The table as printed: formatted strings, speed columns only where some run measured speed."""
    is_baseline = table["attention"] == baseline

    def change(column: str) -> list[str]:
        return ["" if base else _signed_percent(value) for base, value in zip(is_baseline, table[column])]

    shown = {
        "data": table["data"],
        "backbone": table["backbone"],
        "attention": table["attention"],
        "n": table["n"].astype(int).astype(str),
        "top-1 % (mean ± std)": [
            f"{mean:.2f} ± {std:.2f}" if pd.notna(std) else f"{mean:.2f}"
            for mean, std in zip(table["top1_mean"], table["top1_std"])
        ],
        "top-5 %": table["top5_mean"].map(lambda value: _fmt(value, "{:.2f}")),
        "Δ top-1 [95 % CI]": [_delta_cell(row, baseline) for _, row in table.iterrows()],
        "p (Welch)": ["" if base else _p_cell(p) for base, p in zip(is_baseline, table["p_value"])],
        "params (M)": (table["params"] / 1e6).map(lambda value: _fmt(value, "{:.4f}")),
        "Δ params %": change("params_delta_pct"),
        "GFLOPs": (table["flops"] / 1e9).map(lambda value: _fmt(value, "{:#.4g}")),
        "Δ FLOPs %": change("flops_delta_pct"),
    }
    if table["train_images_per_s"].notna().any():
        shown["train img/s"] = table["train_images_per_s"].map(lambda value: _fmt(value, "{:,.0f}"))
        shown["Δ img/s %"] = change("train_images_per_s_delta_pct")
    if table["wandb"].astype(bool).any():
        shown["wandb"] = table["wandb"]
    if table["inference_latency_ms"].notna().any():
        shown["latency ms"] = table["inference_latency_ms"].map(lambda value: _fmt(value, "{:.3g}"))
        shown["Δ latency %"] = change("inference_latency_ms_delta_pct")
    return pd.DataFrame(shown)


def to_markdown(table: pd.DataFrame, baseline: str | None = "none") -> str:
    shown = presentation(table, baseline)
    align = ["left"] * 3 + ["right"] * (len(shown.columns) - 3)
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align)


def to_latex(table: pd.DataFrame, baseline: str | None = "none") -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``); ± and Δ become math symbols."""
    shown = presentation(table, baseline)
    styler = shown.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    latex = styler.to_latex(hrules=True, column_format="lll" + "r" * (len(shown.columns) - 3))
    return latex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("−", "$-$")


def unfinished_markdown(runs: pd.DataFrame) -> str:
    unfinished = runs[~is_completed(runs)]
    columns = ["data", "backbone", "attention", "seed", "status", "error", "path"]
    return unfinished[columns].fillna("").to_markdown(index=False) if not unfinished.empty else ""


def problems_markdown(problems: list[tuple[str, str]]) -> str:
    return pd.DataFrame(problems, columns=["path", "problem"]).to_markdown(index=False) if problems else ""


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[RUN_COLUMNS]


def add_common_arguments(parser: argparse.ArgumentParser, folders_required: bool = True) -> None:
    parser.add_argument("folders", nargs="+" if folders_required else "*", type=Path, help="run or multirun folders")
    parser.add_argument("--baseline", default="none", help="attention variant every row is compared with")
    parser.add_argument("--out", type=Path, help="where the outputs go (default: the first folder)")


def check_folders(parser: argparse.ArgumentParser, folders: list[Path]) -> None:
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, folders_required=False)
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read the runs of a wandb project")
    args = parser.parse_args(argv)
    if not args.folders and not args.wandb:
        parser.error("give run folders, --wandb ENTITY/PROJECT, or both")
    check_folders(parser, args.folders)

    found = scan(args.folders, wandb_records(args.wandb) if args.wandb else [])
    table = summarize(found.runs, args.baseline)
    out = args.out or (args.folders[0] if args.folders else Path("."))
    markdown = to_markdown(table, args.baseline) if not table.empty else "(no completed runs)"
    write_atomic(out / "summary.csv", table.to_csv(index=False))
    write_atomic(out / "summary.md", markdown + "\n")
    write_atomic(out / "summary.tex", to_latex(table, args.baseline) if not table.empty else "% no completed runs\n")
    write_atomic(out / "runs.csv", run_table(found.runs).to_csv(index=False))
    print(markdown)
    if unfinished := unfinished_markdown(found.runs):
        print("\nnot averaged (not completed):")
        print(unfinished)
    if problems := problems_markdown(found.problems):
        print("\nskipped (no usable results.json):")
        print(problems)
    print(f"\n{len(found.runs)} runs; tables in {out}/summary.{{csv,md,tex}}, one row per run in {out / 'runs.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
