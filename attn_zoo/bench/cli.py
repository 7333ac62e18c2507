"""``python -m attn_zoo.bench``: every candidate in every mode, one row at a time, then the table."""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

from attn_zoo.bench import __doc__ as USAGE
from attn_zoo.bench.candidates import candidates, model_cost
from attn_zoo.bench.measure import measure_or_error, unmeasured
from attn_zoo.bench.settings import Settings, compose
from attn_zoo.bench.tables import add_relative, environment, header_line, markdown_table, write_csv
from attn_zoo.bench.warming import warm_compile_caches


def run(settings: Settings) -> list[dict[str, Any]]:
    """Time every candidate in every mode; the CSV is rewritten after each row, so a run stopped
    part-way (a job's time limit) keeps the rows it finished."""
    device = settings.torch_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    shared = environment(settings, device)
    rows = []
    for candidate in candidates(settings):
        try:
            cost, unbuilt = model_cost(candidate, settings.image_size), None
        except Exception as error:  # noqa: BLE001 - a model that cannot be built is a row that says why
            traceback.print_exc()
            cost, unbuilt = dict.fromkeys(("params", "flops", "macs")), unmeasured(error)
        for mode in settings.modes:
            print(f"timing {candidate.implementation} {candidate.model} {mode}", file=sys.stderr)
            rows.append({
                "implementation": candidate.implementation, "model": candidate.model,
                "backbone": candidate.backbone, "attention": candidate.attention, "mode": mode,
                **cost, **(unbuilt or measure_or_error(candidate, mode, settings, device)), **shared,
                "note": candidate.note,
            })
            add_relative(rows)
            write_csv(rows, Path(settings.out))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn_zoo.bench", description=USAGE.split("\n\n")[0])
    parser.add_argument(
        "overrides", nargs="*",
        help="Hydra overrides of conf/bench.yaml, e.g. bench=resnet50 attentions=[none,se] modes=[eager] timm=true",
    )
    args = parser.parse_args(argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        settings = Settings.from_config(compose(args.overrides))
    except (HydraException, OmegaConfBaseException, ValueError, TypeError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    warm_compile_caches(settings, args.overrides)
    rows = run(settings)
    if rows:
        print(header_line(rows[0]))
    print(markdown_table(rows))
    failed = [row for row in rows if row["error"]]
    for row in failed:
        print(f"failed: {row['implementation']} {row['model']} {row['mode']}: {row['error']}")
    print(f"wrote {len(rows)} rows to {settings.out}")
    return 1 if failed else 0

