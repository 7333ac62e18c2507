"""An ImageNet stem on 32x32 images leaves a 1x1 final map: the run stops and says to use the CIFAR stem."""
import pytest
import torch

import attn_zoo
from attn_zoo.config_check import ConfigError
from attn_zoo.train import prepare
from tests.helpers import ROOT, compose_run, run_entry_point, saved


def prepared(*overrides: str):
    return prepare(compose_run(*overrides), ROOT / "unused")


def test_the_readme_command_on_32px_data_says_to_set_the_cifar_stem(tmp_path):
    result = run_entry_point("attention=se", "backbone=resnet50", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert errors[0].endswith("images of 32x32 leave resnet50 with stem=imagenet (it downsamples by 32) a 1x1 final "
                              "feature map: set backbone.stem=cifar (a 4x4 final map) for small images, "
                              "or use images of at least 64x64")


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_imagenet_stem_needs_images_twice_its_stride_and_the_cifar_stem_runs(backbone):
    with pytest.raises(ConfigError, match=f"leave {backbone} with stem=imagenet .* a 1x1 final feature map"):
        prepared(f"backbone={backbone}")
    assert prepared(f"backbone={backbone}", "backbone.stem=cifar")[2] is not None
    assert prepared(f"backbone={backbone}", "data=synthetic", "data.image_size=64")[2] is not None


def test_mobilenet_v2_is_told_of_both_its_small_image_stems():
    """It was told "stem=cifar (3x3 stride-1 stem, no max-pool)": it has no max-pool, and that stem
    leaves a 2x2 map, while its cifar_4x4 stem (most CIFAR papers' MobileNetV2) was not named."""
    with pytest.raises(ConfigError, match=r"set backbone.stem=cifar \(a 2x2 final map\) or backbone.stem=cifar_4x4 "
                                          r"\(a 4x4 final map\) for small images"):
        prepared("backbone=mobilenet_v2")


def test_torchvision_backbone_stops_on_32px_like_resnet50_and_its_cifar_stem_keeps_a_4x4_map(tmp_path):
    """backbone=torchvision ran a 1x1 final map on the 32x32 default data without a word."""
    with pytest.raises(ConfigError, match=r"images of 32x32 leave torchvision with stem=imagenet \(it downsamples by "
                                          r"32\) a 1x1 final feature map: set backbone.stem=cifar"):
        prepared("backbone=torchvision", "backbone.arch=resnet18")
    model = prepared("backbone=torchvision", "backbone.arch=resnet18", "backbone.stem=cifar", "attention=se")[2]
    final = []
    model.layer4.register_forward_hook(lambda _m, _i, output: final.append(output.shape))
    model.eval()(torch.zeros(1, 3, 32, 32))
    assert final[0][-2:] == (4, 4) and model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, torch.nn.Identity)
    _, path = saved(tmp_path, "resnet18")  # a torchvision file's 7x7 conv1 does not fit the cifar stem
    with pytest.raises(ValueError, match=r"do not fit resnet18: other shapes conv1\.weight"):
        attn_zoo.create_model("torchvision", "none", backbone_options={"arch": "resnet18", "stem": "cifar", "weights": path})


@pytest.mark.parametrize("stem, final_map, total", [("cifar", 2, 16), ("cifar_4x4", 4, 8), ("imagenet", 2, 32)])
def test_mobilenet_v2_cifar_stems_set_the_final_map_with_the_same_parameters(stem, final_map, total):
    """stem=cifar alone left a 2x2 map at 32 px; the CIFAR ports papers train also stride stage 2 by 1 (4x4)."""
    from attn_zoo.config_check import total_stride
    size = 64 if stem == "imagenet" else 32
    model = attn_zoo.create_model("mobilenet_v2", "se", num_classes=10, backbone_options={"stem": stem}).eval()
    final = []
    model.last_conv.register_forward_hook(lambda _m, _i, output: final.append(output.shape))
    model(torch.zeros(1, 3, size, size))
    assert final[0][-2:] == (final_map, final_map)
    assert total_stride("mobilenet_v2", {"stem": stem}) == total
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in attn_zoo.create_model("mobilenet_v2", "se", num_classes=10).parameters())
    assert model.stages[1][0].depthwise[0].stride == ((1, 1) if stem == "cifar_4x4" else (2, 2))
    assert model.stages[1][1].depthwise[0].stride == (1, 1) and model.stages[2][0].depthwise[0].stride == (2, 2)


def test_mobilenet_v2_unknown_stem_lists_the_choices():
    with pytest.raises(ValueError, match="unknown stem 'cifar4'; valid: imagenet, cifar, cifar_4x4"):
        attn_zoo.create_model("mobilenet_v2", "none", backbone_options={"stem": "cifar4"})
