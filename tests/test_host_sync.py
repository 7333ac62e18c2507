"""A training step must not wait for the device: a host-device sync per step makes a GPU step cost
host time plus device time instead of the larger of the two. Counted on the CPU, where the same
Python paths run: every ``Tensor.item``/``int``/``float``/``bool`` during a fit is a sync on a GPU."""
from functools import partial

import lightning as L
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from attn_zoo.lit import Classifier, WeightEMA

CONVERSIONS = ("item", "__int__", "__float__", "__bool__")


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
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10))
    module = Classifier(model, 10, partial(torch.optim.SGD, lr=0.1), finite_check_every=25, ema_decay=ema_decay)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        log_every_n_steps=50)
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=8))
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
