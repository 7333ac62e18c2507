"""BatchNorm for attention modules whose normalised tensors can hold one value per channel.

Attention modules normalise small tensors: a pooled (N, d, 1, 1) descriptor, or a 1×1 map. With
batch 1 in training mode that is one value per channel, where ``nn.BatchNorm2d`` raises (the batch
variance is undefined). ``TolerantBatchNorm2d`` normalises such a tensor with its running
statistics instead, as in eval mode, and leaves them unchanged; every other input goes through
``nn.BatchNorm2d`` untouched. It is a subclass, so state_dict keys and checkpoints are the same.
"""
import torch.nn.functional as F
from torch import Tensor, nn


class TolerantBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: Tensor) -> Tensor:
        values_per_channel = x.numel() // max(x.shape[1], 1)
        if self.training and values_per_channel == 1 and self.running_mean is not None:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)
