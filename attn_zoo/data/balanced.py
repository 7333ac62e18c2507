"""A validation order in which every prefix holds the classes in proportion, and the check that two
splits hold the same classes.

Validation sets are stored class by class (the embedded archive, an ImageFolder tree), so a limited
validation (``trainer=debug``: ``limit_val_batches=2``, or any fraction) would see the first classes
only and report a meaningless accuracy. Visiting the images class-interleaved fixes that without a
seed: the order is the same for every run, and a full pass still sees every image exactly once (the
metrics of a full pass do not depend on the order).
"""
from __future__ import annotations

import numpy as np
import torch


def class_interleaved_order(labels: torch.Tensor) -> torch.Tensor:
    """A permutation of ``range(len(labels))``: the k-th of ``n_c`` images of class c goes to
    position ``(k + ½) / n_c`` of the whole (ties by class), so any prefix of length m holds about
    ``m · n_c / N`` images of class c — for equal classes, a round-robin 0, 1, …, C−1, 0, 1, …"""
    labels_np = labels.cpu().numpy()
    rank = np.zeros(len(labels_np), dtype=np.float64)
    for label in np.unique(labels_np):
        members = np.flatnonzero(labels_np == label)
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
    return torch.from_numpy(np.lexsort((labels_np, rank))).long()


def check_same_classes(where, train_split: str, train_classes: list[str], split: str, classes: list[str]) -> None:
    """ValueError when two splits hold different class folders: each numbers its own, so a class
    missing from one would shift every label after it."""
    if classes != train_classes:
        only_train, only_split = sorted(set(train_classes) - set(classes)), sorted(set(classes) - set(train_classes))
        raise ValueError(f"{where}: the class folders of {train_split}/ and {split}/ differ "
                         f"(only in {train_split}: {only_train or 'none'}; only in {split}: {only_split or 'none'})")
