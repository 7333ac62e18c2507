"""The training recipes, the SLURM launcher config and the TensorBoard logger."""
import pytest

import attn_zoo.resolvers  # noqa: F401
from attn_zoo.config import compose
from tests.helpers import run_entry_point


def _compose(*overrides, hydra_config=False):
    return compose(overrides, hydra_config=hydra_config)


def test_cifar_resnet_recipe_is_he_et_al():
    cfg = _compose("+experiment=cifar_resnet")
    assert (cfg.data.name, cfg.backbone.name, cfg.data.batch_size) == ("cifar10", "resnet20", 128)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 1e-4)
    assert cfg.sched._target_.endswith("multistep") and list(cfg.sched.milestones) == [0.5, 0.75]
    assert cfg.trainer.max_epochs == 164 and cfg.trainer.precision == "bf16-mixed"


def test_short_cifar_preset_keeps_the_recipe_but_shortens_it():
    cfg = _compose("+experiment=cifar_resnet_short")
    assert cfg.trainer.max_epochs == 30 and cfg.sched._target_.endswith("cosine")
    assert cfg.data.loader == "gpu" and cfg.optim.lr == 0.1


@pytest.mark.parametrize("batch,devices,expected", [(256, 1, 0.1), (512, 2, 0.4), (1024, 8, 3.2)])
def test_imagenet_lr_scales_linearly_with_the_global_batch(batch, devices, expected):
    cfg = _compose("+experiment=imagenet_resnet50", "data.root=/data/imagenet", f"data.batch_size={batch}",
                   f"trainer.devices={devices}")
    assert cfg.optim.lr == pytest.approx(expected)
    assert cfg.trainer.max_epochs == 90 and cfg.optim.weight_decay == 1e-4 and cfg.backbone.name == "resnet50"


@pytest.mark.parametrize("visible,expected", [(4, 0.8), (0, 0.2)])
def test_imagenet_lr_with_all_devices_counts_the_visible_gpus(visible, expected, monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: visible)
    cfg = _compose("+experiment=imagenet_resnet50", "data.root=/data/imagenet", "data.batch_size=512",
                   "trainer=ddp", "trainer.devices=-1")
    assert cfg.optim.lr == pytest.approx(expected)  # 0.1 × 512 × max(1, visible) / 256


def test_slurm_launcher_is_one_file_to_edit():
    cfg = _compose("hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2", hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == 2 and launcher.timeout_min == 1440 and launcher.signal_delay_s == 120


def test_tensorboard_logger_writes_event_files(tmp_path):
    out = tmp_path / "run"
    completed = run_entry_point("trainer=debug", "logger=tensorboard", f"hydra.run.dir={out}", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("data", ["embedded", "cifar10", "cifar100", "cifar10_jpg", "synthetic", "imagefolder"])
def test_every_data_config_takes_a_validation_batch_size(data, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "cat" / "0.jpg")
    cfg = _compose(f"data={data}", "data.eval_batch_size=7", f"data.root={tmp_path}" if data == "imagefolder" else "data.batch_size=5")
    options = {key: value for key, value in OmegaConf.to_container(cfg.data, resolve=True).items() if key != "name"}
    assert instantiate(options).eval_batch_size == 7
