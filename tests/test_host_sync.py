"""A training step must not wait for the device: a host-device sync per step makes a GPU step cost
host time plus device time instead of the larger of the two. Counted on the CPU, where the same
Python paths run: every ``Tensor.item``/``int``/``float``/``bool`` during a fit is a sync on a GPU.

Nor may it launch kernels it does not need: at small batches the host's launches bound the step
(ResNet-20 at batch 128 on an H200: BENCHMARKS.md, "Training loop"). Counted as the ATen operators
that are not views, each a kernel launch on a GPU."""
import collections
import math
import os
import signal

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from attn_zoo.callbacks import GracefulStop
from attn_zoo.data.device_loader import DeviceResidentLoader
from attn_zoo.lit import Classifier, WeightEMA
from attn_zoo.optim import OptimizerFactory

CONVERSIONS = ("item", "__int__", "__float__", "__bool__")


def _model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 10))


def _fit(module: Classifier, loader, **options) -> L.Trainer:
    """Training only (no validation, logging or checkpoints) on the CPU, one epoch unless told."""
    trainer = L.Trainer(**{"accelerator": "cpu", "max_epochs": 1, "logger": False, "enable_checkpointing": False,
                           "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 0,
                           **options})
    trainer.fit(module, loader)
    return trainer


def syncs_in_a_fit(monkeypatch: pytest.MonkeyPatch, steps: int, ema_decay: float | None = None) -> int:
    """Tensor-to-Python conversions in one epoch of ``steps`` training steps (no validation)."""
    count = 0
    for name in CONVERSIONS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            nonlocal count
            count += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    images, labels = torch.randn(8 * steps, 3, 4, 4), torch.randint(0, 10, (8 * steps,))
    module = Classifier(_model(), 10, OptimizerFactory(torch.optim.SGD, lr=0.1), finite_check_every=25, ema_decay=ema_decay)
    _fit(module, DataLoader(TensorDataset(images, labels), batch_size=8), log_every_n_steps=50)
    monkeypatch.undo()
    return count


def test_training_steps_do_not_sync_with_the_device(monkeypatch):
    short, long = syncs_in_a_fit(monkeypatch, 40), syncs_in_a_fit(monkeypatch, 80)
    # 40 more steps add the non-finite checks at steps 50 and 75 and the loss logged at step 50
    assert long - short <= 4, f"{long - short} more syncs for 40 more steps"


def test_ema_updates_do_not_sync_either(monkeypatch):
    short = syncs_in_a_fit(monkeypatch, 40, ema_decay=0.9)
    long = syncs_in_a_fit(monkeypatch, 80, ema_decay=0.9)
    assert long - short <= 4, f"{long - short} more syncs for 40 more steps"


def test_weight_ema_equals_averaged_model_over_parameters_and_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))
    ours = WeightEMA(model, 0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        loss = model(torch.randn(8, 3, 6, 6)).square().mean()  # train mode: BN buffers move too
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ours.update_parameters(model)
        reference.update_parameters(model)
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert ours_state.keys() == reference_state.keys()
    for key in ours_state:
        torch.testing.assert_close(ours_state[key], reference_state[key], rtol=0, atol=0, msg=key)
    assert int(ours.n_averaged) == 4


def test_a_restored_weight_ema_continues_the_average():
    model = nn.Linear(2, 2)
    saved = WeightEMA(model, 0.5)
    saved.update_parameters(model)
    restored = WeightEMA(nn.Linear(2, 2), 0.5)
    restored.load_state_dict(saved.state_dict())
    with torch.no_grad():
        model.weight.add_(1.0)
    restored.update_parameters(model)  # averages: the restored counter says it has started
    torch.testing.assert_close(restored.module.weight, model.weight - 0.5)


VIEWS = {"view", "_unsafe_view", "slice", "t", "expand", "as_strided", "detach", "alias", "unsqueeze", "select",
         "permute", "squeeze", "transpose", "reshape", "lift_fresh"}


class KernelCount(TorchDispatchMode):
    """Counts the ATen operators that run, views excluded (on a GPU each is a kernel launch)."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in VIEWS:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _device_loader(batches: int, train: bool = True) -> DeviceResidentLoader:
    images = torch.randint(0, 256, (8 * batches, 3, 4, 4), dtype=torch.uint8)
    return DeviceResidentLoader(images, torch.randint(0, 10, (8 * batches,)), batch_size=8, mean=[0.5] * 3,
                                std=[0.25] * 3, train=train)


@pytest.mark.parametrize("train", [True, False])
def test_the_device_loader_launches_two_kernels_per_batch(train):
    """One gather of the crops and one fused normalisation; the epoch's draws come once."""
    counts = []
    for batches in (10, 20):
        counter = KernelCount()
        with counter:
            assert sum(1 for _ in _device_loader(batches, train)) == batches
        counts.append(sum(counter.ops.values()))
    assert (counts[1] - counts[0]) / 10 <= 2, f"{(counts[1] - counts[0]) / 10} kernels per batch"


def _kernels_in_a_fit(steps: int) -> int:
    torch.manual_seed(0)
    module = Classifier(_model(), 10, OptimizerFactory(torch.optim.SGD, lr=0.1, momentum=0.9), finite_check_every=25)
    counter = KernelCount()
    with counter:
        _fit(module, _device_loader(steps), log_every_n_steps=1000)
    return sum(counter.ops.values())


def _kernels_per_step_of_a_plain_loop() -> int:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images, labels = torch.randn(8, 3, 4, 4), torch.randint(0, 10, (8,))
    for _ in range(2):  # the first step makes the momentum buffers
        counter = KernelCount()
        with counter:
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            optimizer.zero_grad()
    return sum(counter.ops.values())


def test_a_training_step_launches_few_kernels_beyond_the_model_and_optimiser():
    """Over a plain PyTorch step (forward, loss, backward, SGD): the loader's 2, the loss record and
    the training top-1 count (5), Lightning's loss scaling and copy (3). Before they were cut: 42."""
    per_step = (_kernels_in_a_fit(80) - _kernels_in_a_fit(40)) / 40
    extra = per_step - _kernels_per_step_of_a_plain_loop()
    assert extra <= 11, f"{extra} kernels per step beyond the model and optimiser"


def test_training_top1_is_the_accuracy_over_the_epochs_samples():
    torch.manual_seed(0)
    images, labels = torch.randn(40, 3, 4, 4), torch.randint(0, 3, (40,))
    module = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(48, 3)), 3, OptimizerFactory(torch.optim.SGD, lr=0.0))
    trainer = _fit(module, DataLoader(TensorDataset(images, labels), batch_size=8))
    reference = MulticlassAccuracy(3, average="micro")
    with torch.no_grad():  # lr 0: the weights every step saw
        reference.update(module.model(images), labels)
    assert float(trainer.callback_metrics["train/top1"]) == pytest.approx(float(reference.compute()))


class NaNForTheFirstImage(nn.Module):
    """Finite logits, except NaN for the first image of each batch."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(48, 3)

    def forward(self, images):
        logits = self.linear(images.flatten(1))
        return torch.cat([logits[:1] * math.nan, logits[1:]])


def test_a_validation_loss_with_a_nan_image_is_no_loss():
    """torchmetrics' MeanMetric drops NaN values by default (with a warning): one image's NaN loss per
    batch gave a finite mean over the others, not the mean over every validation image."""
    images, labels = torch.randn(16, 3, 4, 4), torch.randint(0, 3, (16,))
    module = Classifier(NaNForTheFirstImage(), 3, OptimizerFactory(torch.optim.SGD, lr=0.1))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, DataLoader(TensorDataset(images, labels), batch_size=8))
    assert module.history[-1]["loss"] is None and module.history[-1]["val_images"] == 16


class NonFiniteFrom(nn.Module):
    """A linear layer whose output turns NaN from training forward call ``step`` on (counted from 0;
    one call a step without accumulation), or with ``once`` at that call alone: what follows then
    turns NaN only through the weights that call's gradients reach."""

    def __init__(self, step: int, once: bool = False):
        super().__init__()
        self.linear, self.step, self.once, self.calls = nn.Linear(48, 10), step, once, 0

    def forward(self, images):
        logits = self.linear(images.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls - 1 == self.step or (self.calls > self.step and not self.once):
                logits = logits * math.nan
        return logits


@pytest.mark.parametrize("check_every", [1, 4, 25])
def test_divergence_is_caught_at_its_exact_step_between_checks(check_every):
    images, labels = torch.randn(8 * 12, 3, 4, 4), torch.randint(0, 10, (8 * 12,))
    module = Classifier(NonFiniteFrom(step=6), 10, OptimizerFactory(torch.optim.SGD, lr=0.1), finite_check_every=check_every)
    trainer = _fit(module, DataLoader(TensorDataset(images, labels), batch_size=8), max_epochs=3)
    assert module.diverged_at_step == 6
    # stopped by the first check from step 6 on, whose optimiser step is skipped (every 25: the
    # epoch's end, after step 11)
    assert trainer.global_step == min(math.ceil(6 / check_every) * check_every + 1, 12)


@pytest.mark.parametrize("check_every, call", [(1, 7), (4, 6)])
def test_under_gradient_accumulation_divergence_is_the_step_of_any_micro_batch(check_every, call):
    """Two micro-batches a step: calls 6 and 7 are step 3's. The last micro-batch's loss stood for the
    step (a NaN in the first was overwritten) and a check ran at the step's first micro-batch only, so
    a NaN after it went unseen: its gradients were applied and the run diverged at step 4."""
    images, labels = torch.randn(8 * 24, 3, 4, 4), torch.randint(0, 10, (8 * 24,))
    module = Classifier(NonFiniteFrom(call, once=True), 10, OptimizerFactory(torch.optim.SGD, lr=0.1), finite_check_every=check_every)
    _fit(module, DataLoader(TensorDataset(images, labels), batch_size=8), accumulate_grad_batches=2)
    assert module.diverged_at_step == 3


@pytest.mark.parametrize("check_every", [1, 25])
def test_the_epoch_a_run_diverges_in_is_not_validated(check_every):
    """Its weights or BatchNorm statistics may hold NaN by then: a top-1 measured on them would be
    the run's last result (and could become best.ckpt). The run's result is its last finite epoch."""
    images, labels = torch.randn(8 * 12, 3, 4, 4), torch.randint(0, 10, (8 * 12,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    module = Classifier(NonFiniteFrom(step=18), 10, OptimizerFactory(torch.optim.SGD, lr=0.1), finite_check_every=check_every)
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2)
    trainer.fit(module, loader, loader)
    assert module.diverged_at_step == 18
    assert [row["epoch"] for row in module.history] == [0]


class SignalAtStep(L.Callback):
    """Sends this process ``signum`` as training step ``step`` starts (counted from 0)."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_index):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_a_stop_between_divergence_checks_records_the_divergence_and_saves_no_nan(tmp_path):
    """A SIGTERM a few steps after a NaN loss, before the next check (every 25 steps on a GPU): the
    stop saved the NaN weights as last.ckpt and the run was recorded interrupted, so a rerun skipped
    that checkpoint and resumed from an older one, past the divergence. The stop checks first."""
    images, labels = torch.randn(8 * 12, 3, 4, 4), torch.randint(0, 10, (8 * 12,))
    module = Classifier(NonFiniteFrom(step=6), 10, OptimizerFactory(torch.optim.SGD, lr=0.1), finite_check_every=25)
    checkpoint = tmp_path / "last.ckpt"
    _fit(module, DataLoader(TensorDataset(images, labels), batch_size=8),
         callbacks=[GracefulStop(checkpoint), SignalAtStep(8, signal.SIGTERM)])
    assert module.diverged_at_step == 6
    assert not checkpoint.exists()
