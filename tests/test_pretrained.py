"""backbone.weights: torchvision-format state dicts (made here, never downloaded) load into our
ImageNet backbones and the torchvision backbone, with attention and a new head left new."""
import logging

import pytest
import torch
import torchvision
from torch import nn

import attn_zoo
from attn_zoo.backbones.placement import is_attention_path
from tests.helpers import QUICK, run_entry_point, saved


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "torchvision"])
def test_loaded_backbone_computes_what_torchvision_computes(tmp_path, backbone):
    arch = "resnet18" if backbone == "torchvision" else backbone
    reference, path = saved(tmp_path, arch)
    options = {"weights": path, **({"arch": arch} if backbone == "torchvision" else {})}
    model = attn_zoo.create_model(backbone, "none", backbone_options=options).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert len(model.pretrained_parameters) == len(list(reference.parameters()))


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2", "torchvision"])
def test_attention_and_a_new_head_stay_new_and_identity_start_keeps_the_features(tmp_path, backbone, caplog):
    arch = "resnet18" if backbone == "torchvision" else backbone
    reference, path = saved(tmp_path, arch)
    options = {"weights": path, **({"arch": arch} if backbone == "torchvision" else {})}
    with caplog.at_level(logging.INFO, logger="attn_zoo.backbones.pretrained"):
        model = attn_zoo.create_model(backbone, "se", num_classes=10, backbone_options=options, init="identity").eval()
    assert "new head for 10 classes (the file's has 1000)" in caplog.text and "attention tensors" in caplog.text
    loaded = {name for name, p in model.named_parameters()} - model.pretrained_parameters
    assert loaded and all(is_attention_path(name) or name.startswith(("head", "fc")) for name in loaded)
    # identity start: the features before the head are the pretrained network's, exactly
    head = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    reference_head = [name for name, m in reference.named_modules() if isinstance(m, nn.Linear)][-1]
    model.get_submodule(head.rsplit(".", 1)[0] if "." in head else "").__setattr__(head.split(".")[-1], nn.Identity())
    reference.get_submodule(reference_head.rsplit(".", 1)[0] if "." in reference_head else "").__setattr__(
        reference_head.split(".")[-1], nn.Identity())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_a_file_of_another_architecture_names_the_keys(tmp_path):
    _, path = saved(tmp_path, "resnet34")
    with pytest.raises(ValueError, match=r"do not fit resnet18: unexpected layer1\.2\.bn1\.bias, .* \(\+\d+ more\)"):
        attn_zoo.create_model("resnet18", "se", backbone_options={"weights": path})
    model = torchvision.models.resnet18(weights=None)
    state = model.state_dict()
    del state["layer4.1.bn2.running_var"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"missing layer4\.1\.bn2\.running_var$"):
        attn_zoo.create_model("resnet18", "none", backbone_options={"weights": str(tmp_path / "partial.pt")})
    _, imagenet_stem = saved(tmp_path, "resnet18")
    with pytest.raises(ValueError, match=r": other shapes conv1\.weight \(e\.g\. conv1\.weight: file \(64, 3, 7, 7\), "
                                         r"model \(64, 3, 3, 3\)\)$"):
        attn_zoo.create_model("resnet18", "none", backbone_options={"weights": imagenet_stem, "stem": "cifar"})


def test_unreadable_files_and_conv_replacing_attention_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        attn_zoo.create_model("resnet18", "none", backbone_options={"weights": str(tmp_path / "nope.pt")})
    torch.save({"net": nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a module, not a state dict
    with pytest.raises(ValueError, match=r"is not a state dict torch\.load\(weights_only=True\) reads"):
        attn_zoo.create_model("resnet18", "none", backbone_options={"weights": str(tmp_path / "pickled.pt")})
    _, path = saved(tmp_path, "resnet18")
    with pytest.raises(ValueError, match="replaces convs"):
        attn_zoo.create_model("resnet18", "sk", backbone_options={"weights": path})


def test_a_mismatched_file_is_one_error_line_from_run_py(tmp_path):
    _, path = saved(tmp_path, "resnet34")
    result = run_entry_point(*QUICK, "backbone=resnet18", "backbone.stem=cifar", f"backbone.weights={path}",
                             f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "do not fit resnet18: unexpected layer1.2.bn1.bias" in errors[0], result.stderr


def test_a_file_without_batchnorm_step_counters_loads_as_torchvision_loads_it(tmp_path):
    """Older torchvision files have no ``num_batches_tracked``; torchvision loads them, and so do we
    (the counters stay 0): every other tensor is loaded."""
    reference, path = saved(tmp_path, "resnet18")
    state = {key: value for key, value in torch.load(path).items() if not key.endswith("num_batches_tracked")}
    torch.save(state, path)
    torchvision.models.resnet18().load_state_dict(state)  # torchvision's own check passes
    model = attn_zoo.create_model("resnet18", "none", backbone_options={"weights": path}).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
