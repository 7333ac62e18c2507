"""The bench's rows as a CSV and a markdown table, with each row's speed relative to its ``none``."""
from __future__ import annotations

import csv
import io
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from attn_zoo.bench.settings import Settings
from attn_zoo.results import write_atomic

COLUMNS = (
    "implementation", "model", "backbone", "attention", "mode", "params", "flops", "macs",
    "train_images_per_s", "train_vs_none", "infer_images_per_s", "infer_vs_none",
    "train_peak_mib", "infer_peak_mib", "train_warmup_s", "infer_warmup_s", "batch_size", "image_size", "dtype",
    "channels_last", "timing", "device", "torch", "date", "note", "error",
)


def environment(settings: Settings, device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    dtype = str(settings.torch_dtype(device)).removeprefix("torch.")
    return {
        "batch_size": settings.batch_size, "image_size": settings.image_size, "dtype": dtype,
        "channels_last": settings.channels_last, "timing": settings.timing(), "device": name,
        "torch": torch.__version__, "date": datetime.now().isoformat(timespec="seconds"),
    }


def add_relative(rows: list[dict[str, Any]]) -> None:
    """Throughput over that of the ``none`` row with the same implementation, backbone and mode."""
    key = lambda row: (row["implementation"], row["backbone"], row["mode"])  # noqa: E731
    baselines = {key(row): row for row in rows if row["attention"] == "none" and row["model"].endswith("+none")}
    for row in rows:
        base = baselines.get(key(row))
        for column in ("train", "infer"):
            rate = f"{column}_images_per_s"
            row[f"{column}_vs_none"] = row[rate] / base[rate] if base and row[rate] and base[rate] else None


def _number(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:,.{digits}f}"


def _scaled(value: float | None, unit: float) -> float | None:
    return None if value is None else value / unit


def header_line(row: dict[str, Any]) -> str:
    return (
        f"{row['device']}, torch {row['torch']}, batch {row['batch_size']}, {row['image_size']}x{row['image_size']}, "
        f"{row['dtype']}, channels_last={row['channels_last']}, {row['timing']}, {row['date']}"
    )


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ("impl", "model", "mode", "params (M)", "GFLOPs", "GMACs", "train img/s", "train x none",
              "infer img/s", "infer x none", "train peak MiB", "infer peak MiB", "warm-up s (train/infer)")
    cells = [
        (
            row["implementation"], row["model"], row["mode"], _number(_scaled(row["params"], 1e6), 2),
            _number(_scaled(row["flops"], 1e9), 3), _number(_scaled(row["macs"], 1e9), 3),
            _number(row["train_images_per_s"], 1), _number(row["train_vs_none"], 3),
            _number(row["infer_images_per_s"], 1), _number(row["infer_vs_none"], 3),
            _number(row["train_peak_mib"], 0), _number(row["infer_peak_mib"], 0),
            f"{_number(row['train_warmup_s'], 1)} / {_number(row['infer_warmup_s'], 1)}",
        )
        for row in rows
    ]
    return pd.DataFrame(cells, columns=header).to_markdown(
        index=False, disable_numparse=True, colalign=("left",) * 3 + ("right",) * (len(header) - 3)
    )


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """All rows so far, replacing the file whole (``write_atomic``): the bench rewrites it after each
    row, and a job killed mid-write must keep the rows it had."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: "" if row[k] is None else row[k] for k in COLUMNS} for row in rows)
    write_atomic(path, text.getvalue())
