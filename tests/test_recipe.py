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


def test_multistep_warms_up_linearly_before_its_drops(tmp_path, monkeypatch):
    """One epoch (2 steps) of warm-up to 0.1, then ×0.1 at steps 4 and 6 (the preresnet110 table's
    schedule: sched=multistep sched.warmup_epochs=1)."""
    recorder, _ = _run(tmp_path, monkeypatch, "sched=multistep", "sched.warmup_epochs=1")
    assert recorder.lrs == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], abs=1e-15)


def test_cosine_ends_at_its_floor(tmp_path, monkeypatch):
    """sched.min_factor=0.2: 0.1 · (0.2 + 0.8 · ½(1 + cos(πk/8))) over the 8 steps."""
    recorder, _ = _run(tmp_path, monkeypatch, "sched=cosine", "sched.min_factor=0.2")
    expected = [0.1 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * k / 8))) for k in range(8)]
    assert expected[4] == pytest.approx(0.06, abs=1e-15)
    assert recorder.lrs == pytest.approx(expected, abs=1e-15)


def test_a_warmup_epoch_counts_optimiser_steps_under_gradient_accumulation(tmp_path, monkeypatch):
    """4 batches an epoch, 2 accumulated: an epoch is 2 optimiser steps, so the warm-up takes 2 of the
    4 steps, then half a cosine over the 2 left (counted in batches, the warm-up would take 3 steps,
    capped below the run's 4). The lr is read at each batch: a step's lr holds for the two batches it
    accumulates."""
    recorder, _ = _run(tmp_path, monkeypatch, "sched=cosine", "sched.warmup_epochs=1", "trainer.max_epochs=2",
                       "trainer.limit_train_batches=4", "+trainer.accumulate_grad_batches=2")
    steps = [0.05, 0.1, 0.05 * (1 + math.cos(0)), 0.05 * (1 + math.cos(math.pi / 2))]
    assert recorder.lrs == pytest.approx([lr for lr in steps for _ in range(2)], abs=1e-15)


def test_the_validation_loss_is_plain_cross_entropy_under_label_smoothing(tmp_path, monkeypatch):
    """Label smoothing is the training loss only: val/loss stays comparable across ε."""
    seen = []
    validation_step = Classifier.validation_step

    def record_validation_step(module, batch, batch_index):
        seen.append((module(batch[0]).detach(), batch[1]))
        return validation_step(module, batch, batch_index)

    monkeypatch.setattr(Classifier, "validation_step", record_validation_step)
    _, results = _run(tmp_path, monkeypatch, "label_smoothing=0.1", "trainer.max_epochs=1")
    logits, labels = seen[-1]  # limit_val_batches=1: the last epoch's one batch
    assert results["history"][-1]["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    smoothed = float(F.cross_entropy(logits, labels, label_smoothing=0.1))
    assert abs(results["history"][-1]["loss"] - smoothed) > 1e-3


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


def test_other_one_dimensional_parameters_get_no_weight_decay_either(tmp_path, monkeypatch):
    """README: the option also spares the identity start's α (0-D) and GeM's p (1-D), which are
    neither biases nor norm parameters; decayed, α would be pulled toward the identity it starts at."""
    recorder, _ = _run(tmp_path, monkeypatch, "attention=se", "attention.init=identity", "attention.squeeze=gem",
                       "optim.exclude_norm_and_bias=true", "trainer.max_epochs=1")
    (_, decayed), (_, exempt) = _group_names(recorder.optimizer, recorder.model)
    others = exempt - _no_decay_names(recorder.model)
    blocks = [f"stages.{stage}.{block}.attention" for stage in range(3) for block in range(3)]
    assert others == {f"{block}.scale" for block in blocks} | {f"{block}.module.squeeze.p" for block in blocks}
    assert all(name.endswith("weight") and "bn" not in name for name in decayed)


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


def test_a_run_that_max_steps_ends_mid_epoch_reports_the_network_it_trained(tmp_path, monkeypatch):
    """5 steps of 2-step epochs: Lightning validates only at an epoch's end, so top1 was epoch 1's
    (step 4), not the trained network's. The last validation is of step 5, the run's planned end: not
    an epoch cut short, so last.ckpt holds step 5 (it held step 4 once the stop was requested) and
    best.ckpt may."""
    _, results = _run(tmp_path, monkeypatch, "+trainer.max_steps=5")
    last = results["history"][-1]
    assert (last["step"], last["epoch"], last.get("partial_epoch")) == (5, 2, None)
    assert results["top1"] == last["top1"] and results["epochs"] == 3
    assert [row["step"] for row in results["history"]] == [2, 4, 5]
    assert results["best_top1"] == max(row["top1"] for row in results["history"])
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == results["best_epoch"]


def test_max_steps_validates_the_trained_network_in_an_epoch_validation_skips(tmp_path, monkeypatch):
    """Validating every 2nd epoch, 5 steps of 2-step epochs end in epoch 2, which is not validated: top1
    stayed epoch 1's (step 4)."""
    _, results = _run(tmp_path, monkeypatch, "+trainer.max_steps=5", "+trainer.check_val_every_n_epoch=2")
    assert [row["step"] for row in results["history"]] == [4, 5]
    assert results["top1"] == results["history"][-1]["top1"]


def test_max_epochs_before_max_steps_validates_the_last_epoch_validation_would_skip(tmp_path, monkeypatch):
    """With max_steps set the config check allows an n that does not divide the epochs: 4 epochs of 2
    steps end before 100 steps, and validating every 3rd epoch reported epoch 2's top-1 as the run's."""
    _, results = _run(tmp_path, monkeypatch, "+trainer.max_steps=100", "+trainer.check_val_every_n_epoch=3")
    assert [row["epoch"] for row in results["history"]] == [2, 3]
    assert results["top1"] == results["history"][-1]["top1"] and results["epochs"] == 4


def test_best_epoch_leaves_out_a_validation_in_an_epoch_cut_short():
    history = [{"epoch": 0, "step": 2, "top1": 50.0, "top5": 90.0},
               {"epoch": 1, "step": 3, "top1": 70.0, "top5": 91.0, "partial_epoch": True}]
    metrics = _metrics(history)
    assert (metrics["top1"], metrics["best_top1"], metrics["best_epoch"]) == (70.0, 50.0, 0)
    only_partial = _metrics(history[1:])  # a run stopped in its first epoch: its one validation
    assert (only_partial["best_top1"], only_partial["best_epoch"]) == (70.0, 1)


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
