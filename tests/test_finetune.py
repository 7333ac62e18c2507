"""+experiment=finetune: pretrained backbone, identity-start attention, new head, and a lower learning
rate for the loaded parameters than for the new ones."""
import json

import pytest
import torch
import torchvision
from torch import nn

import attn_zoo
from attn_zoo.backbones.placement import is_attention_path
from attn_zoo.config import compose
from attn_zoo.optim import parameter_groups
from tests.helpers import QUICK, run_entry_point


def cifar_resnet18_weights(path) -> int:
    """A torchvision ResNet-18 with a 3x3 stride-1 stem (ours with stem=cifar), saved as a state dict;
    returns its number of parameter tensors."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=100)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    torch.save(model.state_dict(), path)
    return len(list(model.parameters()))


def test_loaded_parameters_get_their_own_group_and_scale(tmp_path):
    cifar_resnet18_weights(tmp_path / "r18.pt")
    model = attn_zoo.create_model("resnet18", "se", num_classes=10, init="identity",
                                  backbone_options={"stem": "cifar", "weights": str(tmp_path / "r18.pt")})
    groups = parameter_groups(model, True, pretrained_lr_scale=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [len(g["params"]) > 0 for g in groups] == [True] * 4
    for group in groups:
        loaded = {names[id(p)] in model.pretrained_parameters for p in group["params"]}
        assert loaded == {"lr_scale" in group}
    assert len(parameter_groups(model, True)) == 2  # scale 1: as before


def test_finetune_trains_from_run_py_with_a_lower_lr_for_pretrained_parameters(tmp_path):
    count = cifar_resnet18_weights(tmp_path / "r18.pt")
    run = tmp_path / "run"
    result = run_entry_point(
        *QUICK, "+experiment=finetune", "attention=se", "backbone=resnet18", "backbone.stem=cifar",
        f"backbone.weights={tmp_path / 'r18.pt'}", "trainer.max_epochs=1", "data.batch_size=16",
        "data.eval_batch_size=16", f"hydra.run.dir={run}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["attention_variant"] == "se[init=identity]"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    pretrained = [g for g in groups if g.get("lr_scale") == 0.1]
    new = [g for g in groups if "lr_scale" not in g]
    assert sum(len(g["params"]) for g in pretrained) == count - 2  # all but the head (weight, bias)
    assert {g["initial_lr"] for g in new} == {0.01}
    assert [g["initial_lr"] for g in pretrained] == pytest.approx([0.001] * len(pretrained))
    # the schedule moved every group's rate, and the loaded ones kept a tenth of the new ones'
    rates = {g["lr"] for g in new}
    assert len(rates) == 1 and rates != {0.01}
    assert [g["lr"] for g in pretrained] == pytest.approx([0.1 * rates.pop()] * len(pretrained), rel=1e-12)
    # the head is new (10 classes, the file has 100) and the attention parameters are in the new groups
    model_keys = [k for k in checkpoint["state_dict"] if not k.endswith(("running_mean", "running_var", "tracked"))]
    assert sum(len(g["params"]) for g in new) == sum(is_attention_path(k) or ".head." in k for k in model_keys)


def test_finetune_without_weights_says_to_set_them(tmp_path):
    cfg = compose(["+experiment=finetune"])
    assert cfg.attention.init == "identity" and cfg.optim.pretrained_lr_scale == 0.1 and cfg.backbone.weights is None
    result = run_entry_point(*QUICK, "+experiment=finetune", "backbone=resnet18", "backbone.stem=cifar",
                             f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert "optim.pretrained_lr_scale=0.1 scales the parameters that backbone.weights loads" in errors[0]
