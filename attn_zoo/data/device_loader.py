"""A loader that keeps a whole uint8 image dataset on the training device.

Small datasets (CIFAR: 150 MB as uint8) fit in GPU memory many times over. Holding them there
removes the CPU decode/augment/collate/copy pipeline: each batch is gathered, cropped, flipped and
normalised by a few device kernels. The augmentation matches ``cifar_transforms``: a random 32×32
window of the 4-pixel zero-padded image (offsets uniform in 0…8) and a horizontal flip with
probability ½ (``padding=0, flip=False``: none), then ``(x / 255 − mean) / std``. Under DDP the
windows are drawn for the whole epoch's order and sharded with it, so each image's window is the
same on any number of processes.

Randomness: given the data module's ``ResumableRandomSampler`` (``sampler``, as a run has it), the
epoch's order is the sampler's and its crop offsets and flips come from a device generator seeded
from the sampler's epoch seed (``crop_seed``), so a run resumed in mid-epoch (``LoaderPosition`` hands
the sampler its position) continues with the same order and crops. Without one, both come from the
global torch generator of the device, reproducible for a given seed. A whole epoch's order, crop
offsets and flips are drawn when its iterator starts, so a batch costs two
kernels (one gather of the crops, one fused normalisation) instead of a dozen small ones: at small
batches the host's kernel launches, not the GPU, bound the training step.

Training drops the partial last batch (``drop_last`` defaults to ``train``), as the DataLoader path does.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from attn_zoo.data.resumable import ResumableRandomSampler, sample_seed
from attn_zoo.data.shards import check_evaluation_split, rank_share, share_size


# sample_seed's stream for the crops, beyond any image index. Torch's CPU generator keeps a seed's low 32 bits
# only, where this seed equals image 0's per-image seed: harmless, as no loader draws both kinds
CROP_STREAM = 2**40


def crop_seed(epoch_seed: int) -> int:
    """The seed of an epoch's crop offsets and flips, mixed from the epoch seed rather than equal to it:
    on the CPU both generators are the same mt19937, and with one seed ``torch.randperm``'s draws for
    the order were ``randint``'s draws for the offsets, which tied each position's vertical offset to
    the image the order put there (at the positions i ≡ n mod 9, 56 % of offsets were
    (order_i − i) mod 9 where 11 % are by chance; runs before 2026-12-07 on the CPU had this)."""
    return sample_seed(epoch_seed, CROP_STREAM)


class DeviceResidentLoader:
    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        device: torch.device | str = "cpu",
        padding: int = 4,
        flip: bool = True,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        sampler: ResumableRandomSampler | None = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
        self.device = torch.device(device)
        # training drops the partial last batch by default, as the CPU DataLoader path does
        drop_last = train if drop_last is None else drop_last
        self.train, self.padding, self.batch_size, self.drop_last = train, padding, batch_size, drop_last
        self.flip = flip
        self.rank, self.world_size = rank, world_size
        if not train:
            check_evaluation_split(len(labels), world_size)
        self.order_sampler = sampler if train else None  # not `sampler`: Lightning would take this for a DataLoader
        self.height, self.width = images.shape[-2:]
        stored = F.pad(images, (padding,) * 4) if train and padding else images
        self.images = stored.to(self.device)
        self.labels = labels.to(self.device)
        # (x / 255 - mean) / std as one multiply-add: x * scale + shift
        std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.scale = 1 / (255 * std)
        self.shift = -torch.tensor(mean, device=self.device).view(1, -1, 1, 1) / std
        self.row_offsets = torch.arange(self.height, device=self.device)
        columns = torch.arange(self.width, device=self.device)
        self.column_offsets = torch.stack([columns, columns.flip(0)])  # row 1: mirrored
        self.channels = torch.arange(images.shape[1], device=self.device)[None, :, None, None]

    def _shard_size(self) -> int:
        return share_size(len(self.labels), self.rank, self.world_size, pad=self.train)

    def __len__(self) -> int:
        per_rank = self._shard_size()
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def _epoch(self) -> tuple[torch.Tensor, int, torch.Generator | None]:
        """The epoch's whole order (every rank's), the position to start this rank's share at (a
        resume's), and the generator of its crops (None: the device's global one)."""
        count, start, generator = len(self.labels), 0, None
        if self.order_sampler is not None:
            indices, start = self.order_sampler.epoch()
            order = torch.tensor(indices, device=self.device)
            generator = torch.Generator(device=self.device)
            generator.manual_seed(crop_seed(self.order_sampler.seed))
        elif self.train:
            order = torch.randperm(count, device=self.device)
        else:
            order = torch.arange(count, device=self.device)
        return order, start, generator

    def _share(self, order: torch.Tensor) -> torch.Tensor:
        return rank_share(order, self.rank, self.world_size, pad=self.train)

    def _crop_windows(self, count: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (count, 1, H, 1) and columns (count, 1, 1, W) of a random window of the padded
        images for each of ``count`` samples, its columns reversed for a random half of them."""
        span = 2 * self.padding + 1
        top = torch.randint(0, span, (count, 1), device=self.device, generator=generator)
        left = torch.randint(0, span, (count, 1), device=self.device, generator=generator)
        flip = torch.randint(0, 2, (count,), device=self.device, generator=generator) if self.flip else \
            torch.zeros(count, dtype=torch.long, device=self.device)
        rows = top + self.row_offsets
        columns = left + self.column_offsets[flip]
        return rows[:, None, :, None], columns[:, None, None, :]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, start, generator = self._epoch()
        if self.train:
            # one window per position of the whole epoch, drawn before sharding: a resumed epoch's crops
            # sit at the same positions, and each rank's are its own (not rank 0's again)
            rows, columns = map(self._share, self._crop_windows(len(order), generator))
        order = self._share(order)
        labels = self.labels[order]
        for batch in range(start // self.batch_size, len(self)):
            part = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            if self.train:
                pixels = self.images[order[part, None, None, None], self.channels, rows[part], columns[part]]
            else:
                pixels = self.images[order[part]]
            yield torch.addcmul(self.shift, pixels, self.scale), labels[part]
