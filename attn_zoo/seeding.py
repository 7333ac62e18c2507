"""Seeds derived from other seeds, and torch's CPU generator seeded for a moment.

Two uses: the per-image augmentation seeds of ``data/resumable.py`` (from the epoch seed and the
image index) and the attention modules' own streams in ``backbones/placement.py`` (from the run's
seed and the module's place in the network), so that what one draws never shifts what the other does.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant (2^64 / golden ratio): spreads consecutive seeds apart


def derived_seed(seed: int, index: int) -> int:
    return (seed * _MIX + index) % 2**63


def generator_position() -> int:
    """A seed from where torch's CPU generator stands (a digest of its state), drawing nothing from it."""
    state = torch.default_generator.get_state().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(state, digest_size=8).digest(), "little") % 2**63


@contextmanager
def cpu_generator_seeded(seed: int):
    """Torch's CPU generator seeded to ``seed`` inside, its state outside as before. Cheaper than
    ``torch.random.fork_rng`` (a quarter of its time per call, per image here) and, unlike
    ``torch.manual_seed``, leaves the CUDA generators alone."""
    state = torch.default_generator.get_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.default_generator.set_state(state)
