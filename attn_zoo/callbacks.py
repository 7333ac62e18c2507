"""Lightning callbacks used by every run."""
from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RandomStateCheckpoint(L.Callback):
    """Save the random generators' states in each checkpoint and restore them on resume.

    Lightning restores weights, optimiser, scheduler and loop counters but not the generators, so
    a resumed run would shuffle and augment differently from an uninterrupted one. The states are
    applied on restore and again at the end of the sanity-check validation (which draws from the
    generator too) and before the training data iterator is made, the point where the saving run
    stood; without a sanity check they are already in place from the restore.
    Stored as tensors and lists so the checkpoint loads with ``weights_only=True``.
    """

    def __init__(self):
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        version, numpy_keys, position, has_gauss, cached = np.random.get_state()
        python_version, python_state, python_gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [version, torch.from_numpy(numpy_keys.astype(np.int64)), position, has_gauss, cached],
            "python": [python_version, list(python_state), python_gauss],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pending = state_dict
        self._apply(state_dict)

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pending is not None:
            self._apply(self.pending)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pending = None

    @staticmethod
    def _apply(state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        version, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((version, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        python_version, python_state, python_gauss = state["python"]
        random.setstate((python_version, tuple(python_state), python_gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
