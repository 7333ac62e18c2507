"""Input-pipeline speed alone: the images/s a data config delivers to the training device, no model.

    python -m attn_zoo.tools.loader_speed data=cifar10_jpg data.num_workers=8                 # DataLoader
    python -m attn_zoo.tools.loader_speed data=cifar10_jpg data.loader=gpu --device cuda      # device-resident
    python -m attn_zoo.tools.loader_speed data=imagefolder data.root=DIR data.loader=gpu --device cuda   # nvJPEG

Arguments are Hydra overrides of the run config (``conf/config.yaml``), so a data option means what
it means to ``run.py``. The training loader is iterated for ``--epochs`` epochs; each batch is moved
to the device and finished there as Lightning does it (the data module's ``transfer_batch_to_device``
and ``on_after_batch_transfer``: ``data=imagefolder data.loader=gpu`` decodes and augments there) and
the clock stops after a device synchronisation. One markdown table row per epoch; the first holds the
workers' start-up.
Training speed with a model is what ``results.json`` records; this gives the loader's own ceiling.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import pandas as pd
import torch

from attn_zoo.config import build_datamodule, compose
from attn_zoo.config_check import one_line, validate_data
from attn_zoo.throughput import synchronize


def epoch_rates(datamodule, device: torch.device, epochs: int) -> list[float]:
    """Images/s of each pass over the training loader, batches delivered on ``device``."""
    datamodule.loader_device = device
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    rates = []
    for _ in range(epochs):
        synchronize(device)
        started, images = time.perf_counter(), 0
        for batch in loader:
            # as Lightning does: move the batch, then the data module's on-device step (a GPU decode)
            pixels, labels = datamodule.on_after_batch_transfer(datamodule.transfer_batch_to_device(batch, device, 0), 0)
            images += len(labels)
        synchronize(device)
        rates.append(images / (time.perf_counter() - started))
    return rates


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn_zoo.tools.loader_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=cifar10_jpg data.num_workers=8")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the training set (default 2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(args.overrides)
        validate_data(cfg)  # the run's own checks of its data group: missing values, paths
        datamodule = build_datamodule(cfg.data)
    except (HydraException, OmegaConfBaseException, ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    loader = getattr(datamodule, "loader", "cpu")
    workers = getattr(datamodule, "num_workers", 0)
    rows = [
        (loader, workers, datamodule.batch_size, str(device), epoch, f"{rate:,.0f}")
        for epoch, rate in enumerate(epoch_rates(datamodule, device, args.epochs), start=1)
    ]
    table = pd.DataFrame(rows, columns=["loader", "num_workers", "batch", "device", "epoch", "img/s"])
    print(table.to_markdown(index=False, disable_numparse=True, colalign=("left",) * 4 + ("right",) * 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
