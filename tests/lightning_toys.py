"""A tiny Lightning model whose validation takes a known pause, for the timing callbacks' tests."""
import time

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

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
