"""An ImageNet stem on 32x32 images leaves a 1x1 final map: the run stops and says to use the CIFAR stem."""
import pytest

from attn_zoo.config_check import ConfigError
from attn_zoo.train import prepare
from tests.helpers import ROOT, compose_run, run_entry_point


def prepared(*overrides: str):
    return prepare(compose_run(*overrides), ROOT / "unused")


def test_the_readme_command_on_32px_data_says_to_set_the_cifar_stem(tmp_path):
    result = run_entry_point("attention=se", "backbone=resnet50", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert errors[0].endswith("images of 32x32 leave resnet50 with stem=imagenet (it downsamples by 32) a 1x1 final "
                              "feature map: set backbone.stem=cifar (3x3 stride-1 stem, no max-pool) for small images, "
                              "or use images of at least 64x64")


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_imagenet_stem_needs_images_twice_its_stride_and_the_cifar_stem_runs(backbone):
    with pytest.raises(ConfigError, match=f"leave {backbone} with stem=imagenet .* a 1x1 final feature map"):
        prepared(f"backbone={backbone}")
    assert prepared(f"backbone={backbone}", "backbone.stem=cifar")[2] is not None
    assert prepared(f"backbone={backbone}", "data=synthetic", "data.image_size=64")[2] is not None
