"""One self-contained HTML page for a sweep: the summary table, the plots and what the runs varied.

    python analysis/report.py multirun/2026-11-26/10-00-00 [more folders...] [--baseline none] [--out DIR]

Writes ``report.html`` into ``--out`` (default: the first folder). The page needs no network and no
files beside it: plots are embedded as base64 PNG, styles are inline. It holds

- the summary table of ``summarize.py``, one row per experiment (mean ± std over seeds, Δ top-1 vs the baseline with its
  95 % Welch interval and p-value, parameter/FLOP/speed changes);
- the plots of ``plots.py`` (accuracy vs cost with the Pareto front; validation curves);
- the config differences: every resolved-config key whose value is not the same in all runs,
  one row per run (keys holding the run's own folder, such as output paths, are left out);
- the runs that did not complete and the results.json files that could not be read.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd

from analysis.plots import plot_scan
from attn_zoo.results import write_atomic
from analysis.summarize import (
    flatten_config, folders_to_outputs, is_completed, presentation, recorded_config, scan, setting_columns, summarize,
)

MISSING = "—"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; }
td:nth-child(-n+3), th:nth-child(-n+3) { text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: 100%; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
"""
READING = (
    "Each row of the table is one experiment: one attention variant in one backbone on one data set, "
    "with every other resolved config key that differs across the runs shown in the variant label "
    "(attention and backbone options, e.g. se[placement=pre]) or as its own column (e.g. optim.lr); "
    "runs average together only when all of these are equal (keys that do not change the experiment, "
    "such as the seed, paths, loggers, workers and the evaluation batch size, are ignored). Top-1 is the "
    "final-epoch validation accuracy, mean ± sample std over seeds (n). Δ top-1 is the difference from "
    "the baseline variant ({baseline}) in the same setting (data, backbone and every other key shown; a "
    "network without attention is the same wherever attention would go, so none at one placement or set "
    "of stages serves them all), with its 95 % Welch interval: an "
    "interval that contains 0 (and p ≥ 0.05) is a difference the seeds cannot tell from noise. "
    "Δ % columns compare parameters, FLOPs (2 × MACs, convolutions and matrix products only) and, "
    "where measured, training throughput with the baseline."
)


def config_differences(runs: pd.DataFrame, configs: list[dict]) -> pd.DataFrame:
    """One row per run, one column per config key whose value differs between runs."""
    flats = [flatten_config(config) for config in configs]
    keys = sorted({key for flat in flats for key in flat})

    def own_folder(key: str) -> bool:
        """A key holding the run's own folder or a path beneath it (``paths.output_dir``,
        ``logger.csv.save_dir``): different in every run by construction, where it lies now or, for a
        moved run, where it was trained. Whole path components: a run read as ``0`` hides no ``resnet20``."""
        return any(isinstance(flat.get(key), str)
                   and any(folder and Path(flat[key]).is_relative_to(folder)
                           for folder in (str(Path(path).absolute()), _trained_in(flat)))
                   for flat, path in zip(flats, runs["path"]))

    differing = [
        key for key in keys
        if len({json.dumps(flat.get(key, MISSING), sort_keys=True, default=str) for flat in flats}) > 1
        and not own_folder(key)
    ]
    table = pd.DataFrame(
        {key: [flat.get(key, MISSING) for flat in flats] for key in differing}, index=runs.index
    )
    identity = runs[["path", "attention", "status", "top1"]].round({"top1": 2}).rename(
        columns={"path": "run", "attention": "variant", "top1": "top-1 %"}
    )
    if "code_versions" in runs and runs["code_versions"].nunique(dropna=False) > 1:  # runs of other code
        identity["code"] = runs["code_versions"].fillna(MISSING)
    return pd.concat([identity, table], axis=1).sort_values(["variant", "run"], key=lambda c: c.astype(str))


def _trained_in(flat: dict) -> str | None:
    """The folder a run recorded it trained in: an absolute path only. A relative one ("." in a foreign
    run folder) hid every relative-path key of every run, and a non-string one crashed the report."""
    recorded = flat.get("paths.output_dir")
    return recorded if isinstance(recorded, str) and Path(recorded).is_absolute() else None


def _image(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = html.escape(path.stem.replace("_", " "))
    return f'<figure><img alt="{caption}" src="data:image/png;base64,{encoded}"><figcaption>{caption}</figcaption></figure>'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, na_rep="", border=0)


WANDB_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]*)\)")


def _summary_table(shown: pd.DataFrame) -> str:
    """The summary as the other tables, its wandb column's ``[s0](url)`` links as HTML links."""
    if "wandb" not in shown:
        return _table(shown)
    cells = shown.map(lambda value: html.escape(str(value)))
    cells["wandb"] = [" ".join(_link(text, url) for text, url in WANDB_LINK.findall(str(value))) for value in shown["wandb"]]
    # escape=False leaves the headers raw too, and setting columns are named by config keys of the runs
    cells.columns = [html.escape(str(column)) for column in cells.columns]
    return cells.to_html(index=False, escape=False, na_rep="", border=0)


def _link(text: str, url: str) -> str:
    """A link to a wandb run; a URL that is not http(s) (``javascript:`` from a run folder someone
    else made) is shown as text, never made a link."""
    if not url.lower().startswith(("https://", "http://")):
        return html.escape(f"{text} ({url})")
    return f'<a href="{html.escape(url)}">{html.escape(text)}</a>'


def render(folders: list[Path], baseline: str | None = "none") -> str:
    found = scan(folders)
    table = summarize(found.runs, baseline)
    with tempfile.TemporaryDirectory() as scratch:
        figures = [_image(path) for path in plot_scan(found, table, Path(scratch)) if path.suffix == ".png"]
    sections = [
        f"<h1>Attention ablation report</h1><p class='note'>{len(found.runs)} runs beneath "
        f"{html.escape(', '.join(str(folder) for folder in folders))}; generated "
        f"{dt.datetime.now().isoformat(timespec='seconds')}.</p>",
        "<h2>Summary</h2>",
        _summary_table(presentation(table, baseline)) if not table.empty else "<p>No completed runs.</p>",
        f"<p class='note'>{html.escape(READING.format(baseline=baseline))}</p>",
        "<h2>Plots</h2>",
        "".join(figures) or "<p>No plots (no completed runs).</p>",
        "<p class='note'>Accuracy vs cost: one point per variant, labelled with its number of seeds n, bars ± "
        "one std over seeds (none for one seed); the grey step lines are the Pareto fronts, one per setting "
        "(no other variant of that setting is both more accurate and cheaper). Variants without a "
        "comparable speed are left out of the speed plot (the table lists them). Curves: mean validation "
        "top-1 over seeds per epoch, on the epochs every seed has, band from the lowest to the highest "
        "seed.</p>",
        "<h2>Config differences</h2>",
        "<p class='note'>Resolved config keys whose values differ across runs (output paths left out), "
        "the seed and the keys that do not split rows included, to check that a sweep varied only what it "
        "meant to.</p>",
        _table(config_differences(found.runs, [recorded_config(record) for record in found.records]))
        if not found.runs.empty else "<p>No runs.</p>",
    ]
    unfinished = found.runs[~is_completed(found.runs)]
    if not unfinished.empty:
        sections += ["<h2>Not averaged (not completed)</h2>",
                     _table(unfinished[["data", "backbone", "attention", *setting_columns(unfinished), "seed", "status",
                                        "error", "path"]])]
    if found.problems:
        sections += ["<h2>Skipped (no usable results.json, or a seed already counted)</h2>",
                     _table(pd.DataFrame(found.problems, columns=["path", "problem"]))]
    body = "\n".join(sections)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>Attention ablation report</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def write_report(folders: list[Path], out: Path, baseline: str) -> list[Path]:
    write_atomic(out / "report.html", render(folders, baseline))
    return [out / "report.html"]


def main(argv: list[str] | None = None) -> int:
    return folders_to_outputs(__doc__, argv, write_report)


if __name__ == "__main__":
    sys.exit(main())
