"""JPEG folders read, decoded and augmented by an NVIDIA DALI pipeline (``data=imagefolder data.loader=dali``).

DALI is the loader of NVIDIA's own ResNet-50 reference: its reader and CPU threads replace the
DataLoader workers, and on a GPU its ``"mixed"`` decoder runs nvJPEG fused with the random crop, so
only the crop window of each image is decoded. Without a CUDA training device the same pipeline runs
on the CPU (``device_id=None``, libjpeg-turbo via nvImageCodec), which is how the tests run it.
Optional: ``pip install -e '.[dali]'`` (the ``nvidia-dali-cuda130`` wheel).

The pipeline, one per epoch:

- ``fn.readers.file`` over the data module's own ImageFolder scan (the same files and labels as the
  CPU path), in the order of a ``ResumableRandomSampler``: the CPU path's order for the same seed;
- training: ``fn.decoders.image_random_crop`` (area 8-100 %, aspect 3/4-4/3 drawn by DALI, 10
  attempts, as torchvision's RandomResizedCrop; unlike it, DALI places its fallback crop, when every
  attempt fails, at a random position rather than the centre, and skips the attempts for images of
  extreme aspect ratio: rare on photographs), ``fn.resize`` to
  ``image_size`` (linear, antialiased), a horizontal flip with probability 1/2 and
  ``(x - 255 mean) / (255 std)`` in ``fn.crop_mirror_normalize``;
- evaluation: decode, resize the shorter side to ``image_size * 256 / 224``, centre crop ``image_size``.

Randomness: the epoch's order and the DALI pipeline's seed both come from the sampler's epoch seed,
drawn from the global torch generator, so they follow the run's ``seed`` and the checkpointed random
state: an epoch-boundary resume repeats the uninterrupted run's order, crops and flips. A mid-epoch
resume (``LoaderPosition``) continues the interrupted epoch's order after the batches done, but the
rest of that epoch's crops and flips are new draws: DALI's generators are not checkpointed.

DALI's decoder error names no file. When a batch fails, the files of that batch and of those it
had prefetched are decoded with PIL (the CPU path's loader), and the first one that fails is named.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Iterator, Sequence

import torch

from attn_zoo.config_check import ConfigError
from attn_zoo.data.resumable import ResumableRandomSampler
from attn_zoo.data.shards import check_evaluation_split, rank_share, share_size

PREFETCH = 2  # DALI's default prefetch_queue_depth: batches decoded ahead of the one returned


def dali_available() -> bool:
    from importlib.util import find_spec

    try:
        return find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no ``nvidia`` namespace at all
        return False


def imagenet_pipeline(files: list[str], labels: list[int], *, train: bool, image_size: int,
                      mean: Sequence[float], std: Sequence[float], decode_device: str, **pipeline):
    """The DALI pipeline of one epoch over ``files`` in this order (``pipeline``: batch_size,
    num_threads, device_id, seed, prefetch_queue_depth)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def
    def definition():
        jpegs, targets = fn.readers.file(files=files, labels=labels, random_shuffle=False)
        if train:
            images = fn.decoders.image_random_crop(
                jpegs, device=decode_device, output_type=types.RGB, adjust_orientation=False,  # as PIL's loader
                random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10,
            )
            images = fn.resize(images, size=[image_size, image_size], interp_type=types.INTERP_LINEAR, antialias=True)
            mirror = fn.random.coin_flip(probability=0.5)
            crop = {}
        else:
            images, crop = evaluation_resize(jpegs, image_size, decode_device)
            mirror = 0
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW", crop=(image_size, image_size), mirror=mirror,
            mean=[255 * m for m in mean], std=[255 * s for s in std], **crop,
        )
        return images, targets

    return definition(**pipeline)


def evaluation_resize(jpegs, image_size: int, decode_device: str):
    """Decoded images resized as torchvision's ``Resize(round(image_size * 256 / 224))`` sizes them
    (shorter side to that, longer side ``floor(shorter * long / short)``; DALI's ``resize_shorter``
    rounds it instead), and the ``crop_pos_x/y`` that put the centre crop where ``CenterCrop`` does
    (``round((side - crop) / 2)``, ties to even). On these textured images a one-pixel change of
    either moves every output pixel: 5-13 grey levels apart instead of about one.

    Sizes come from the JPEG headers (``peek_image_shape``: CPU, before a ``"mixed"`` decode).
    EXIF orientation is ignored, as PIL's loader ignores it; fancy chroma upsampling is
    libjpeg-turbo's and PIL's (nvJPEG's default differs)."""
    from nvidia.dali import fn, math as dmath, types

    shape = fn.peek_image_shape(jpegs, adjust_orientation=False)
    height, width = shape[0], shape[1]
    shorter, short = int(round(image_size * 256 / 224)), dmath.min(height, width)
    new_height, new_width = (shorter * height) // short, (shorter * width) // short  # exact integer floor
    images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB, adjust_orientation=False,
                               jpeg_fancy_upsampling=True)
    to_float = partial(fn.cast, dtype=types.FLOAT)
    images = fn.resize(images, resize_x=to_float(new_width), resize_y=to_float(new_height),
                       interp_type=types.INTERP_LINEAR, antialias=True)
    crop = {"crop_pos_x": _centre_anchor(new_width, image_size), "crop_pos_y": _centre_anchor(new_height, image_size)}
    return images, crop


def _centre_anchor(side, crop: int):
    """``crop_pos`` (0-1 of ``side - crop``) of torchvision's centre-crop offset ``round((side - crop) / 2)``
    with Python's ties to even, plus a quarter pixel so that DALI's own rounding (or truncation) of
    ``crop_pos * (side - crop)`` lands on that integer."""
    from nvidia.dali import fn, math as dmath, types

    spare = side - crop
    half = spare // 2
    odd_spare, odd_half = spare - 2 * half, half - 2 * (half // 2)
    anchor = half + odd_spare * odd_half  # x.5 rounds up only to an even number
    return (fn.cast(anchor, dtype=types.FLOAT) + 0.25) / fn.cast(dmath.max(spare, 1), dtype=types.FLOAT)


def to_torch(outputs, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A DALI TensorList (CPU or GPU) copied into a new torch tensor on ``device``: DALI reuses its
    output buffers on the next ``run``, so a batch must not alias them."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = outputs.as_tensor()
    tensor = torch.empty(dense.shape(), dtype=dtype, device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(dense, tensor, cuda_stream=stream)
    return tensor


def named_failure(batches: list[list[str]], error: Exception) -> Exception:
    """The error to raise when DALI failed on one of ``batches`` (the failing one and those prefetched
    after it): a ``ConfigError`` naming the first file PIL cannot decode either, else DALI's error
    with the range of files it came from."""
    from attn_zoo.data.imagefolder import load_rgb

    for path in (path for batch in batches for path in batch):
        try:
            load_rgb(path).close()
        except ConfigError as named:
            return named
    paths = [path for batch in batches for path in batch]
    return RuntimeError(f"DALI failed on one of {len(paths)} files from {paths[0]} to {paths[-1]} "
                        f"(all decode with PIL): {error}")


class DaliLoader:
    """(images, labels) batches of ``samples`` (``(path, label)`` pairs) from a DALI pipeline built
    for each pass; images float32 (N, 3, S, S) on ``device``, labels int64 on the host (Lightning
    moves them). Training shuffles with ``sampler`` (the datamodule's ``train_sampler``, which
    ``LoaderPosition`` resumes mid-epoch) and drops the partial last batch, as the DataLoader path does; evaluation keeps the
    order and every image. Under DDP each rank reads its share (``shards``: padded for training only)."""

    def __init__(self, samples: Sequence[tuple[str, int]], *, batch_size: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float], train: bool, device: torch.device | str = "cpu",
                 num_threads: int = 1, rank: int = 0, world_size: int = 1,
                 sampler: ResumableRandomSampler | None = None):
        self.samples, self.batch_size, self.train = list(samples), batch_size, train
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        if not train:
            check_evaluation_split(len(self.samples), world_size)
        self.sampler = (sampler or ResumableRandomSampler(self.samples)) if train else None
        self.batch_sampler = None  # Lightning reads both, as on a DataLoader given a sampler
        on_gpu = self.device.type == "cuda"
        if on_gpu and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.pipeline_options = dict(
            train=train, image_size=image_size, mean=tuple(mean), std=tuple(std),
            decode_device="mixed" if on_gpu else "cpu", batch_size=batch_size, num_threads=max(1, num_threads),
            device_id=self.device.index if on_gpu else None, prefetch_queue_depth=PREFETCH,
        )

    def _shard_size(self) -> int:
        return share_size(len(self.samples), self.rank, self.world_size, pad=self.train)

    def __len__(self) -> int:
        per_rank = self._shard_size()
        return per_rank // self.batch_size if self.train else math.ceil(per_rank / self.batch_size)

    def _epoch(self) -> tuple[list[int], int]:
        """This pass's indices into ``samples`` for this rank (after the batches a resume skips), and
        the DALI seed: a 31-bit number (DALI takes a non-negative int) from the epoch seed and the
        rank, so that ranks do not draw the same crop boxes and flips for their i-th images."""
        if self.train:
            order, start = self.sampler.epoch()
            seed = (self.sampler.seed + self.rank) % 2**31
        else:
            order, start, seed = list(range(len(self.samples))), 0, 0
        order = rank_share(order, self.rank, self.world_size, pad=self.train)
        order = order[start:]
        if self.train:  # only full batches: the reader's epoch is exactly the batches yielded
            order = order[: len(order) // self.batch_size * self.batch_size]
        return order, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, seed = self._epoch()
        if not order:
            return
        files = [self.samples[index][0] for index in order]
        labels = [self.samples[index][1] for index in order]
        pipeline = imagenet_pipeline(files, labels, seed=seed, **self.pipeline_options)
        pipeline.build()
        for first in range(0, len(files), self.batch_size):
            try:
                images, targets = pipeline.run()
            except RuntimeError as error:
                step = self.batch_size
                ahead = [files[start : start + step] for start in range(first, first + (PREFETCH + 1) * step, step)]
                raise named_failure([batch for batch in ahead if batch], error) from error
            count = min(self.batch_size, len(files) - first)  # the last evaluation batch: the reader wrapped to fill it
            labels = to_torch(targets, torch.int32, torch.device("cpu")).view(-1)[:count].long()
            yield to_torch(images, torch.float32, self.device)[:count], labels
        del pipeline
