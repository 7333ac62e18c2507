"""``TrainThroughput``: training images/s exclude validation; the epoch's wall time includes it."""
import time

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from attn_zoo.throughput import TrainThroughput

VALIDATION_PAUSE_S = 0.1


class SlowValidation(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def training_step(self, batch, batch_index):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_index):
        time.sleep(VALIDATION_PAUSE_S)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(count: int) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(count, 4), torch.randint(0, 2, (count,))), batch_size=8)


def test_epoch_seconds_hold_validation_and_the_rate_does_not():
    throughput = TrainThroughput()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[throughput])
    trainer.fit(SlowValidation(), loader(32), loader(32))  # 4 training and 4 validation batches per epoch
    summary = throughput.summary()
    assert len(summary["epoch_seconds_by_epoch"]) == len(summary["train_images_per_s_by_epoch"]) == 2
    for seconds, rate in zip(summary["epoch_seconds_by_epoch"], summary["train_images_per_s_by_epoch"]):
        training_seconds = 32 / rate
        assert training_seconds < 4 * VALIDATION_PAUSE_S  # the rate's clock stopped before validation
        assert seconds >= training_seconds + 4 * VALIDATION_PAUSE_S
