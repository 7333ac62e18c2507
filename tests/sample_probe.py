"""A Lightning callback for the tests, given to a real run as ``+callbacks.probe``: each rank writes a
digest of every training image it trains on, one line per image, to ``<folder>/rank<r>_epoch<e>.txt``
(the images as the model receives them: synthetic data has no augmentation, so one image gives one
digest on every rank)."""
import hashlib
import time
from pathlib import Path

import lightning as L


class SampleProbe(L.Callback):
    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        images = batch[0].detach().cpu().contiguous()
        digests = [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images]
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.txt", "a") as file:
            file.write("".join(f"{digest}\n" for digest in digests))


class SlowRankZeroEnd(L.Callback):
    """Rank 0 takes ``seconds`` longer to end than the other ranks, as closing a wandb run does."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def teardown(self, trainer, pl_module, stage):
        if trainer.global_rank == 0:
            time.sleep(self.seconds)


class PoisonOneRank(L.Callback):
    """Makes rank ``rank``'s training batch at step ``step`` non-finite (the other ranks' stay finite):
    a loss that turns NaN on one process first, as an overflow in one rank's data does."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            batch[0].fill_(float("nan"))
