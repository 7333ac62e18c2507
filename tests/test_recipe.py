"""The recipe a run actually trains with, exact-valued: the learning rate at each step, which
parameters get weight decay, the optimiser's class and options, the loss with label smoothing, and
which epoch ``best_*`` reports. Each run is the real one (config → ``attn_zoo.train.run``), a few
steps on the embedded data, with the Classifier's hooks recording what it was given."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attn_zoo.config import compose
from attn_zoo.config_check import channels_last
from attn_zoo.lit import Classifier
from attn_zoo.optim import OptimizerFactory
from attn_zoo.train import _metrics, run
from tests.helpers import QUICK

# 4 epochs of 2 steps at batch 8: 8 optimiser steps, 2 per epoch
SHORT = (*QUICK, "data.batch_size=8", "trainer.max_epochs=4", "trainer.limit_val_batches=1")


class Recorder:
    """Patches the Classifier so a real run records each step's lr, the optimiser, the model, and
    each step's loss beside the logits and labels it came from."""

    def __init__(self, monkeypatch):
        self.lrs, self.losses, self.optimizer, self.model = [], [], None, None
        forward, training_step = Classifier.forward, Classifier.training_step
        recorder = self

        def record_forward(module, images):
            module._last_logits = forward(module, images)
            return module._last_logits

        def record_training_step(module, batch, batch_index):
            loss = training_step(module, batch, batch_index)
            recorder.losses.append((loss.detach(), module._last_logits.detach(), batch[1]))
            return loss

        def record_batch_start(module, batch, batch_index):
            recorder.optimizer, recorder.model = module.trainer.optimizers[0], module.model
            recorder.lrs.append(recorder.optimizer.param_groups[0]["lr"])

        monkeypatch.setattr(Classifier, "forward", record_forward)
        monkeypatch.setattr(Classifier, "training_step", record_training_step)
        monkeypatch.setattr(Classifier, "on_train_batch_start", record_batch_start, raising=False)


def _run(tmp_path, monkeypatch, *overrides):
    recorder = Recorder(monkeypatch)
    cfg = compose([*SHORT, *overrides, f"paths.output_dir={tmp_path}"])
    results = run(cfg)
    assert results["status"] == "completed", results.get("error")
    return recorder, results


def test_cosine_with_warmup_is_stepped_per_step(tmp_path, monkeypatch):
    recorder, _ = _run(tmp_path, monkeypatch, "sched=cosine", "sched.warmup_epochs=1")
    # warm-up over one epoch (2 steps) to lr 0.1, then half a cosine over the 6 steps left
    expected = [0.05, 0.1] + [0.05 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert expected[3:] == pytest.approx([0.09330127018922194, 0.075, 0.05, 0.025, 0.006698729810778076])
    assert recorder.lrs == pytest.approx(expected, abs=1e-15)


def test_a_run_cut_short_by_max_steps_still_warms_up_over_one_epoch(tmp_path, monkeypatch):
    """6 of the 8 steps (max_steps): the warm-up is one epoch's 2 steps (it was 6 // 4 = 1 step),
    then half a cosine over the 4 left."""
    recorder, _ = _run(tmp_path, monkeypatch, "sched=cosine", "sched.warmup_epochs=1", "+trainer.max_steps=6")
    expected = [0.05, 0.1] + [0.05 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert recorder.lrs == pytest.approx(expected, abs=1e-15)


def test_multistep_divides_by_ten_at_half_and_three_quarters(tmp_path, monkeypatch):
    recorder, _ = _run(tmp_path, monkeypatch, "sched=multistep")
    assert recorder.lrs == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2, abs=1e-15)


def _no_decay_names(model: nn.Module) -> set[str]:
    """Every bias and every parameter of a normalisation layer, whatever its shape."""
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    return {
        f"{owner}.{name}" if owner else name
        for owner, module in model.named_modules()
        for name, _ in module.named_parameters(recurse=False)
        if name == "bias" or isinstance(module, norms)
    }


def _group_names(optimizer, model) -> list[tuple[float, set[str]]]:
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [(group["weight_decay"], {names[id(p)] for p in group["params"]}) for group in optimizer.param_groups]


def test_norm_and_bias_parameters_get_no_weight_decay(tmp_path, monkeypatch):
    # GC's LayerNorm holds (d, 1, 1) weights: a norm parameter that is not 1-D
    recorder, _ = _run(tmp_path, monkeypatch, "attention=gc", "optim.exclude_norm_and_bias=true",
                       "trainer.max_epochs=1")
    (decay, decayed), (no_decay, exempt) = _group_names(recorder.optimizer, recorder.model)
    everything = {name for name, _ in recorder.model.named_parameters()}
    assert (decay, no_decay) == (5e-4, 0.0)
    assert exempt == _no_decay_names(recorder.model) and decayed == everything - exempt
    # decayed: 21 convs + the head's weight + 3 convs in each of 9 GC blocks; exempt: 21 BatchNorms
    # (weight, bias), the head's bias, and per GC block 3 conv biases + LayerNorm weight and bias
    assert (len(decayed), len(exempt)) == (22 + 27, 42 + 1 + 45)
    assert "stages.0.0.attention.transform.1.weight" in exempt


def test_without_the_option_every_parameter_is_decayed(tmp_path, monkeypatch):
    recorder, _ = _run(tmp_path, monkeypatch, "trainer.max_epochs=1")
    ((decay, names),) = _group_names(recorder.optimizer, recorder.model)
    assert decay == 5e-4 and names == {name for name, _ in recorder.model.named_parameters()}


def test_nesterov_reaches_sgd(tmp_path, monkeypatch):
    recorder, _ = _run(tmp_path, monkeypatch, "optim.nesterov=true", "trainer.max_epochs=1")
    assert type(recorder.optimizer) is torch.optim.SGD
    groups = [(g["initial_lr"], g["momentum"], g["nesterov"]) for g in recorder.optimizer.param_groups]
    assert groups == [(0.1, 0.9, True)]


def test_adamw_is_adamw_with_its_options(tmp_path, monkeypatch):
    recorder, _ = _run(tmp_path, monkeypatch, "optim=adamw", "sched=none", "trainer.max_epochs=1")
    assert type(recorder.optimizer) is torch.optim.AdamW
    groups = [(g["lr"], g["betas"], g["weight_decay"]) for g in recorder.optimizer.param_groups]
    assert groups == [(1e-3, (0.9, 0.999), 0.05), (1e-3, (0.9, 0.999), 0.0)]


def test_another_optimizer_class_trains_once_the_keys_it_does_not_take_are_removed(tmp_path, monkeypatch):
    """README's example: the class swapped, SGD's nesterov removed, its lr, momentum and decay kept."""
    recorder, _ = _run(tmp_path, monkeypatch, "optim.optimizer=torch.optim.RMSprop", "~optim.nesterov",
                       "sched=none", "trainer.max_epochs=1")
    assert type(recorder.optimizer) is torch.optim.RMSprop
    groups = [(g["lr"], g["momentum"], g["weight_decay"]) for g in recorder.optimizer.param_groups]
    assert groups == [(0.1, 0.9, 5e-4)]


def test_label_smoothing_is_the_loss_trained_on(tmp_path, monkeypatch):
    recorder, _ = _run(tmp_path, monkeypatch, "label_smoothing=0.1", "trainer.max_epochs=1")
    assert len(recorder.losses) == 2  # both training steps seen: an empty list would check nothing
    for loss, logits, labels in recorder.losses:
        log_p = F.log_softmax(logits.double(), dim=1)
        # (1 - ε) · NLL of the label + ε · mean over the 10 classes of −log p
        smoothed = (0.9 * -log_p.gather(1, labels[:, None]).squeeze(1) - 0.1 * log_p.mean(dim=1)).mean()
        assert float(loss) == pytest.approx(float(smoothed), rel=1e-6)
        assert abs(float(loss) - float(F.cross_entropy(logits, labels))) > 1e-3


def test_best_epoch_is_the_first_epoch_with_the_highest_top1_counted_from_zero():
    history = [{"epoch": e, "step": 2 * e, "top1": t, "top5": 90.0 + e} for e, t in enumerate([50.0, 70.0, 70.0, 60.0])]
    metrics = _metrics(history)
    assert (metrics["best_epoch"], metrics["best_top1"], metrics["best_top5"]) == (1, 70.0, 91.0)
    assert (metrics["top1"], metrics["epochs"]) == (60.0, 4)


def test_best_epoch_is_the_epoch_best_ckpt_holds(tmp_path, monkeypatch):
    _, results = _run(tmp_path, monkeypatch, "trainer.max_epochs=3")
    tops = [row["top1"] for row in results["history"]]
    assert [row["epoch"] for row in results["history"]] == [0, 1, 2]
    assert results["best_epoch"] == tops.index(max(tops)) and results["best_top1"] == max(tops)
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == results["best_epoch"]


def test_an_optimizer_without_weight_decay_keeps_its_own_default():
    """AdamW's default weight decay is 0.01: a recipe that leaves ``weight_decay`` out gets it on the
    decayed group, not 0 (exclude_norm_and_bias only sets the exempt group's)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = OptimizerFactory("torch.optim.AdamW", lr=1e-3, exclude_norm_and_bias=True)(model)
    assert [(len(g["params"]), g["weight_decay"]) for g in optimizer.param_groups] == [(1, 0.01), (3, 0.0)]
    plain = OptimizerFactory(torch.optim.SGD, lr=0.5, weight_decay=1e-4)(model)
    assert [(len(g["params"]), g["lr"], g["weight_decay"]) for g in plain.param_groups] == [(4, 0.5, 1e-4)]


@pytest.mark.parametrize("overrides, expected", [
    ([], False), (["trainer=gpu"], True), (["trainer=ddp"], True), (["trainer=gpu", "channels_last=false"], False),
    (["channels_last=true"], True), (["trainer.accelerator=auto"], torch.cuda.is_available()),
])
def test_channels_last_auto_follows_the_accelerator(overrides, expected):
    assert channels_last(compose(overrides)) is expected
