"""Summarise finished runs: one row per (data, backbone, attention variant), mean ± std over seeds.

    python analysis/summarize.py multirun/2026-11-26/10-00-00 [more folders...] [--out DIR]

Reads every ``results.json`` beneath the folders (the contract written by training; this script
never imports the training code), prints a markdown table and writes ``summary.csv`` and
``summary.md`` into ``--out`` (default: the first folder). The std is the sample standard
deviation over seeds (ddof=1), empty for a single seed. Runs that are not ``completed`` are
listed apart and never averaged in; unreadable results.json files are reported and skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

GROUP_KEYS = ["data", "backbone", "attention"]


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        print(f"skipping unreadable {path}: {error}", file=sys.stderr)
        return None
    if not isinstance(record, dict) or record.get("schema") != 1:
        print(f"skipping {path}: not a schema-1 results.json", file=sys.stderr)
        return None
    return record


def load_runs(folders: list[Path]) -> pd.DataFrame:
    """One row per results.json beneath ``folders``; ``attention`` is the variant label."""
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("results.json")):
            record = _read(path)
            if record is None:
                continue
            rows.append(
                {
                    "data": record.get("data"),
                    "backbone": record.get("backbone"),
                    "attention": record.get("attention_variant", record.get("attention")),
                    "seed": record.get("seed"),
                    "status": record.get("status"),
                    "top1": record.get("top1"),
                    "top5": record.get("top5"),
                    "best_top1": record.get("best_top1"),
                    "params": record.get("params"),
                    "flops": record.get("flops"),
                    "epochs": record.get("epochs"),
                    "path": str(path.parent),
                }
            )
    return pd.DataFrame(rows, columns=[*GROUP_KEYS, "seed", "status", "top1", "top5", "best_top1",
                                       "params", "flops", "epochs", "path"])


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Aggregate completed runs per group: n, top-1 mean/std, top-5 mean, params, FLOPs."""
    completed = runs[runs["status"] == "completed"]
    if completed.empty:
        return pd.DataFrame(columns=[*GROUP_KEYS, "n", "top1_mean", "top1_std", "top5_mean", "params", "flops"])
    grouped = completed.groupby(GROUP_KEYS, sort=True, dropna=False)
    table = grouped.agg(
        n=("top1", "size"),
        top1_mean=("top1", "mean"),
        top1_std=("top1", "std"),
        top5_mean=("top5", "mean"),
        params=("params", "first"),
        flops=("flops", "first"),
    )
    return table.reset_index()


def to_markdown(table: pd.DataFrame) -> str:
    shown = pd.DataFrame(
        {
            "data": table["data"],
            "backbone": table["backbone"],
            "attention": table["attention"],
            "n": table["n"],
            "top-1 % (mean ± std)": [
                f"{mean:.2f} ± {std:.2f}" if pd.notna(std) else f"{mean:.2f}"
                for mean, std in zip(table["top1_mean"], table["top1_std"])
            ],
            "top-5 %": table["top5_mean"].map("{:.2f}".format),
            "params": table["params"].map("{:,.0f}".format),
            "MFLOPs": (table["flops"] / 1e6).map("{:.2f}".format),
        }
    )
    return shown.to_markdown(index=False, disable_numparse=True, colalign=["left"] * 3 + ["right"] * 5)


def _write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="run or multirun folders")
    parser.add_argument("--out", type=Path, help="where summary.csv and summary.md go (default: first folder)")
    args = parser.parse_args(argv)
    missing = [str(folder) for folder in args.folders if not folder.is_dir()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")

    runs = load_runs(args.folders)
    table = summarize(runs)
    out = args.out or args.folders[0]
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(table) if not table.empty else "(no completed runs)"
    _write_atomic(out / "summary.csv", table.to_csv(index=False))
    _write_atomic(out / "summary.md", markdown + "\n")
    print(markdown)
    unfinished = runs[runs["status"] != "completed"]
    if not unfinished.empty:
        print("\nnot averaged (not completed):")
        print(unfinished[["attention", "seed", "status", "path"]].to_markdown(index=False))
    print(f"\n{len(runs)} runs; tables in {out / 'summary.csv'} and {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
