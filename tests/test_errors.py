"""Bad input fails at start-up with one readable line naming what is valid.

Values and files that can be checked before data loads are checked then: schedules, optimiser
ranges, integer options, resume files, the run and sweep folders; runs with nothing to train or
validate; image trees with symlink loops, unreadable or oversized images. Most entries of the catalogue are checked in-process (Hydra compose + ``train.prepare``, the
start-up path of every run: config checks, data module, image size, model); a few go through
``run.py`` to prove the one line on stderr, the exit code and the results.json of a failed job.
"""
import json
import platform

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from PIL import Image

import attn_zoo
from attn_zoo import cost
from attn_zoo.config_check import ConfigError, total_stride
from attn_zoo.data.imagefolder import ImageFolder, load_rgb
from attn_zoo.train import prepare, run
from tests.helpers import IMAGEFOLDER, QUICK, ROOT, compose_run, hold_lock, image, image_tree, run_entry_point, startup_error


@pytest.mark.parametrize("group, name", [
    ("attention", "xyz"), ("backbone", "resnet7"), ("data", "mnist"), ("optim", "lion"), ("sched", "onecycle"),
])
def test_unknown_group_choice_names_the_available_ones(group, name):
    with pytest.raises(MissingConfigException) as error:
        compose_run(f"{group}={name}")
    assert f"Could not find '{group}/{name}'" in str(error.value)
    assert all(option in str(error.value) for option in {"attention": ["se", "cbam"], "backbone": ["resnet20"],
               "data": ["embedded"], "optim": ["sgd"], "sched": ["cosine"]}[group])


def test_a_misspelt_config_key_is_rejected_by_hydra_strict_mode():
    with pytest.raises(ConfigCompositionException, match="reductoin"):
        compose_run("attention=se", "attention.reductoin=8")


@pytest.mark.parametrize("overrides, expected", [
    (["attention.name=xyz"], "unknown attention 'xyz'; valid: cbam, cbam_channel"),
    (["backbone.name=resnet7"], "unknown backbone 'resnet7'; valid:"),
    (["attention=se", "+attention.gamma=2"], "attention 'se' has no option gamma; valid: act, axis"),
    (["attention=se", "attention.reduction=0"], "attention.reduction must be > 0, got 0"),
    (["attention=cbam", "attention.reduction=-4"], "attention.reduction must be > 0, got -4"),
    # no floor: the hidden width C/r would round to 0 channels
    (["attention=se", "attention.reduction=128", "attention.divisor=1", "attention.min_width=0"],
     "min_width must be >= 1"),
    (["attention=coord", "attention.min_width=0"], "min_width must be >= 1"),
    # an option renamed since (k_size, bias), as a sweep written before names it
    (["attention=se", "+attention.bias=false"], "attention 'se' has no option bias; valid: act, axis"),
    (["attention=eca", "+attention.k_size=3"],
     "attention 'eca' has no option k_size; valid: init, kernel_size (k_size is now kernel_size)"),
    (["attention=eca", "attention.kernel_size=4"], "positive odd size, got 4"),
    (["attention=eca", "attention.kernel_size=0"], "positive odd size, got 0"),
    (["attention=cbam", "attention.kernel_size=6"], "kernel_size must be a positive odd number"),
    (["attention=cbam_spatial", "attention.kernel_size=4"], "kernel_size must be a positive odd number"),
    (["attention=sk", "attention.branches=1"], "branches must be >= 2"),
    (["backbone.placement=inside"], "unknown placement 'inside'; valid: standard, pre, post, identity, 3x3"),
    (["backbone.placement=3x3"], "placement '3x3' does not apply to resnet20 (BasicBlocks); valid here: standard"),
    (["attention=sk", "backbone.placement=post"], "only placement 'standard' applies"),
    (["backbone.stages=[0,1]"], "stages [0] out of range; valid: 1, 2, 3"),
    (["backbone.stages=[2,4]"], "stages [4] out of range; valid: 1, 2, 3"),
    (["data=synthetic", "data.num_classes=0"], "data.num_classes must be an integer >= 1, got 0"),
    (["+backbone.num_classes=-1"], "backbone.num_classes must be an integer >= 1, got -1"),
    (["data.batch_size=0"], "data.batch_size must be an integer >= 1, got 0"),
    (["optim.lr=0"], "optim.lr must be > 0, got 0"),
    (["optim=adamw", "optim.lr=-0.001"], "optim.lr must be > 0, got -0.001"),
    (["trainer.max_epochs=0"], "trainer.max_epochs must be an integer >= 1, got 0"),
    (["attention=se", "backbone.fused_tail=cuda"], "fused_tail must be false, true or triton; got 'cuda'"),
    (["profile.steps=-1"], "profile.steps must be an integer >= 0, got -1"),
    (["compile=true", "compile_mode=fast"], "compile_mode must be null or one of default, reduce-overhead"),
    (["data=imagefolder"], "data.root must be set (no default)"),
    (["data=cifar10", "data.root=/nonexistent/cifar"], "data.root /nonexistent/cifar does not exist"),
    (["data=cifar10_jpg", "data.archive=/nonexistent/cifar.tar.gz"], "data.archive /nonexistent/cifar.tar.gz does not exist (data=cifar10_jpg); point data.archive at the file"),
    (["resume=/nonexistent/run"], "resume: no checkpoint at /nonexistent/run"),
    (["sched=multistep", "sched.gamma=-0.1"], "sched.gamma must be > 0, got -0.1"),
    (["sched.min_factor=1.5"], "sched.min_factor must be in [0, 1], got 1.5"),
    (["sched.warmup_epochs=3"], "sched.warmup_epochs (trainer.max_epochs=1) must be in [0, 1], got 3"),
    (["sched=multistep", "trainer.max_epochs=4", "sched.warmup_epochs=2"],
     "sched.warmup_epochs=2 reaches the first milestone (epoch 2 of trainer.max_epochs=4); warm up for fewer epochs"),
    (["optim.momentum=1.5"], "optim.momentum must be in [0, 1), got 1.5"),
    (["optim=adamw", "optim.betas=[0.9,1.2]"], "optim.betas[1] must be in [0, 1), got 1.2"),
    (["optim=adamw", "optim.betas=[0.9]"], "optim.betas must be two numbers in [0, 1)"),
    (["sched=multistep", "sched.milestones=[50,75]"], "sched.milestones are fractions of the run in (0, 1)"),
    (["attention=se", "attention.divisor=2.5"], "attention.divisor must be an integer >= 1, got 2.5"),
    (["seed=1.5"], "seed must be an integer in [0, 2**32), got 1.5"),
    (["seed=-1"], "seed must be an integer in [0, 2**32), got -1"),
    (["trainer.limit_val_batches=0"], "trainer.limit_val_batches=0 would validate on nothing"),
    (["trainer.limit_train_batches=0.0"], "trainer.limit_train_batches=0.0 would train on nothing"),
    (["optim.optimizer=torch.nn.Linear"], "optim.optimizer must name a torch.optim.Optimizer class, got 'torch.nn.Linear'"),
    (["optim.optimizer=torch.optim.Sgd"], "Error loading 'torch.optim.Sgd'"),
    # swapping the class keeps the group's other keys: RMSprop takes no nesterov, SGD no betas
    (["optim.optimizer=torch.optim.RMSprop"],
     "optim: torch.optim.rmsprop.RMSprop takes no argument nesterov (the optim group's other keys are passed to it); "
     "remove with '~optim.nesterov'"),
    (["optim=adamw", "optim.optimizer=torch.optim.SGD"], "takes no argument betas"),
    # an optim group written for the old layout (the optimiser itself as _target_)
    (["optim._target_=torch.optim.SGD", "+optim._partial_=true", "~optim.optimizer", "~optim.exclude_norm_and_bias"],
     "optim: _target_ must be attn_zoo.optim.OptimizerFactory"),
    (["channels_last=yes"], "channels_last must be true, false or auto, got 'yes'"),
    # the last validation would have been epoch 4's, reported as the 5-epoch run's top1
    (["trainer.max_epochs=5", "+trainer.check_val_every_n_epoch=2"],
     "trainer.check_val_every_n_epoch=2 does not divide trainer.max_epochs=5: the last validation would follow epoch 4 of 5"),
    # Lightning ignores the stop at max_steps until min_epochs: the run trained on, its last validation stale
    (["+trainer.max_steps=5", "+trainer.min_epochs=3"], "trainer.min_epochs with trainer.max_steps: the steps end the run"),
])
def test_bad_config_fails_at_startup_in_one_line(overrides, expected):
    assert expected in startup_error(*overrides)


@pytest.mark.parametrize("overrides", [
    ["attention=se", "backbone.stages=[]"],
    ["attention=simam", "backbone.stages=[]"],  # parameter-free: counted by module, not by parameters
    ["attention=sk", "backbone=resnet18", "backbone.stem=cifar", "backbone.stages=[]"],
    ["attention=eca", "backbone=mobilenet_v2", "backbone.stem=cifar", "backbone.stages=[]"],
    ["attention=se", "backbone=torchvision", "backbone.arch=resnet18", "backbone.stem=cifar", "backbone.stages=[]"],
])
def test_attention_with_no_place_to_go_is_a_config_error(overrides):
    """Else the run trains the plain network and records it under the attention's name."""
    message = startup_error(*overrides)
    attention = overrides[0].split("=")[1]
    assert f"attention '{attention}' has no place in" in message and "attention=none" in message


@pytest.mark.parametrize("backbone", ["resnet20", "torchvision"])
def test_no_attention_with_no_stages_is_still_the_baseline(backbone):
    stem = ["backbone.stem=cifar"] if backbone == "torchvision" else []  # 32x32 data
    _, _, model = prepare(compose_run("attention=none", f"backbone={backbone}", *stem, "backbone.stages=[]"), ROOT / "unused")
    assert cost.count_attention_params(model) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_trainer_without_a_gpu_says_use_cpu():
    assert startup_error("trainer=gpu") == "trainer.accelerator=gpu but no CUDA device is available; use trainer=cpu"


def test_images_smaller_than_the_backbone_stride_are_rejected():
    message = startup_error("backbone=resnet50", "data=synthetic", "data.image_size=8")
    assert message.startswith("images of 8x8 are too small for resnet50 (stem=imagenet): it downsamples by 32")
    assert "backbone.stem=cifar" in message
    # the same images pass with the CIFAR stem (stride 8), and 32x32 pass the ImageNet stem
    prepare(compose_run("backbone=resnet50", "backbone.stem=cifar", "data=synthetic", "data.image_size=8"), ROOT)
    assert "downsamples by 4" in startup_error("data=synthetic", "data.image_size=2")


@pytest.mark.parametrize("backbone, options, stride", [
    ("resnet20", {}, 4), ("resnet50", {"stem": "imagenet"}, 32), ("resnet50", {"stem": "cifar"}, 8),
    ("mobilenet_v2", {"stem": "imagenet"}, 32), ("torchvision", {"arch": "resnet18"}, 32), ("wrn16_8", {}, 4),
])
def test_total_stride_is_measured_per_backbone(backbone, options, stride):
    assert total_stride(backbone, options) == stride


def test_an_attention_of_no_channels_is_rejected():
    # SKFusion's inputs of different shapes or number: tests/test_fusion.py
    with pytest.raises(ValueError, match="channels must be >= 1"):
        attn_zoo.create_attention("se", 0)


def test_imagefolder_with_an_empty_class_folder_names_it(tmp_path):
    root = image_tree(tmp_path / "tree")
    (root / "train" / "bird").mkdir()
    (root / "val" / "bird").mkdir()
    message = startup_error(*IMAGEFOLDER, f"data.root={root}")
    assert message.startswith(f"class folder {root / 'train' / 'bird'} holds no images")


def test_imagefolder_splits_with_different_classes_are_rejected(tmp_path):
    root = image_tree(tmp_path / "tree")
    image(root / "train" / "bird" / "0.png")
    message = startup_error(*IMAGEFOLDER, f"data.root={root}")
    assert "class folders of train/ and val/ differ (only in train: ['bird']; only in val: none)" in message


# ---------------------------------------------------------------- through run.py


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("overrides, message", [
    (["attention=se", "attention.reduction=-1"], "error: attention.reduction must be > 0, got -1"),
    (["backbone=resnet50", "data=synthetic", "data.image_size=8"], "error: images of 8x8 are too small for resnet50"),
    (["attention=se", "backbone.stages=[]"], "error: resnet20 with attention se: attention 'se' has no place in resnet20"),
])
def test_run_prints_one_error_line_exits_2_and_records_the_failure(tmp_path, overrides, message):
    out = tmp_path / "run"
    completed = run_entry_point(*QUICK, *overrides, f"hydra.run.dir={out}", cwd=tmp_path)
    assert completed.returncode == 2
    assert len(_lines(completed.stderr)) == 1 and _lines(completed.stderr)[0].startswith(message), completed.stderr
    assert "Traceback" not in completed.stdout + completed.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed" and results["error"].startswith("ConfigError: " + message[len("error: "):])
    assert not (out / "checkpoints").exists(), "training started"


def test_full_error_shows_the_traceback(tmp_path):
    completed = run_entry_point(*QUICK, "optim.lr=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                                env={"HYDRA_FULL_ERROR": "1"})
    assert completed.returncode == 1
    assert "Traceback" in completed.stderr and "ConfigError: optim.lr must be > 0, got 0" in completed.stderr


def test_misspelt_key_through_run_py_fails_before_anything_runs(tmp_path):
    completed = run_entry_point("attention=se", "attention.reductoin=8", cwd=tmp_path)
    assert completed.returncode != 0 and "reductoin" in completed.stderr
    assert "Traceback" not in completed.stderr and not list(tmp_path.iterdir())


def test_a_cifar_root_without_cifar_in_it_is_one_error_line(tmp_path):
    """data.root one folder off (it exists, the batches lie below it) gave a 49-line traceback, exit 1."""
    out = tmp_path / "run"
    completed = run_entry_point(*QUICK, "data=cifar10", f"data.root={tmp_path}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr[-2000:]
    errors = [line for line in _lines(completed.stderr) if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: CIFAR10 not found in {tmp_path.resolve()} ("), errors
    assert "Put cifar-10-python.tar.gz there extracted (cifar-10-batches-py/)" in errors[0]
    assert "traceback" not in json.loads((out / "results.json").read_text())


def test_a_corrupt_image_fails_the_run_naming_the_file(tmp_path):
    root = image_tree(tmp_path / "tree")
    corrupt = root / "val" / "dog" / "1.png"
    corrupt.write_bytes(b"not a png")
    out = tmp_path / "run"
    completed = run_entry_point(*QUICK, *IMAGEFOLDER, f"data.root={root}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert completed.returncode == 2
    errors = [line for line in _lines(completed.stderr) if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot decode image {corrupt}" in errors[0], completed.stderr[-2000:]
    assert str(corrupt) in json.loads((out / "results.json").read_text())["error"]


def test_a_folder_in_use_by_a_live_run_is_refused(tmp_path):
    """A live run holds the folder's lock (tests/test_run_folder.py: two runs at once, stale records)."""
    out = tmp_path / "run"
    other = hold_lock(out)
    try:
        held = {"schema": 1, "status": "running", "host": platform.node(), "pid": other.pid}
        (out / "results.json").write_text(json.dumps(held))
        with pytest.raises(ConfigError, match="in use by a running job"):
            run(compose_run(output_dir=out))
        assert json.loads((out / "results.json").read_text()) == held, "the other run's results.json was touched"
    finally:
        other.kill()
        other.wait()


def _checkpoint_files(tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(100, 100)}, "global_step": 1}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.fc.weight": torch.zeros(3, 3)}, "global_step": 1}, other)
    return truncated, text, other


def test_a_bad_resume_file_is_one_line(tmp_path):
    truncated, text, other = _checkpoint_files(tmp_path)
    assert startup_error(f"resume={truncated}").startswith(f"resume: {truncated} does not load")
    assert startup_error(f"resume={text}").startswith(f"resume: {text} does not load")
    message = startup_error(f"resume={other}")
    assert message.startswith("no checkpoint can be resumed:") and "holds another model" in message


def test_a_results_json_that_is_a_folder_and_an_unwritable_run_folder(tmp_path):
    (tmp_path / "run" / "results.json").mkdir(parents=True)
    with pytest.raises(ConfigError, match="results.json exists but is not a regular file"):
        run(compose_run(output_dir=tmp_path / "run"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=f"cannot write to the run folder {tmp_path / 'file' / 'run'}"):
        run(compose_run(output_dir=tmp_path / "file" / "run"))


def test_a_training_set_smaller_than_one_batch_is_an_error(tmp_path):
    root = image_tree(tmp_path / "tree", per_class=2)
    out = tmp_path / "run"
    completed = run_entry_point(*QUICK, *IMAGEFOLDER, "data.batch_size=8", f"data.root={root}",
                                f"hydra.run.dir={out}", cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr[-2000:]
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: no training batch: 4 training images in batches of data.batch_size=8 with the last "
                      "partial batch dropped; lower data.batch_size"]
    assert json.loads((out / "results.json").read_text())["status"] == "failed"
    assert "stopped: No training batches" not in completed.stdout + completed.stderr, "fit ran first"
    assert not (out / "checkpoints").exists()


def test_a_symlink_loop_in_a_class_folder_lists_each_image_once(tmp_path):
    root = image_tree(tmp_path / "tree", per_class=2)
    (root / "train" / "cat" / "loop").symlink_to(root / "train" / "cat")
    (root / "train" / "dog" / "up").symlink_to(root / "train")
    data = ImageFolder(root=str(root), image_size=8, augment="cifar", num_workers=0)
    data.setup()
    assert len(data.train_set) == 4 and data.num_classes == 2


def test_an_oversized_or_unreadable_image_is_named(tmp_path, monkeypatch):
    big = image(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 64 pixels is over twice the limit
    with pytest.raises(ConfigError, match=f"image {big} is too large to decode safely"):
        load_rgb(str(big))
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match=f"cannot decode image {tmp_path / 'dangling.png'}"):
        load_rgb(str(tmp_path / "dangling.png"))


def test_an_unwritable_run_dir_through_run_py_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    completed = run_entry_point(*QUICK, f"hydra.run.dir={tmp_path / 'file' / 'run'}", cwd=tmp_path)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr[-2000:]
    assert completed.stderr.strip().splitlines() == [
        f"error: cannot write to the run folder {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is not a folder"]


def test_an_unwritable_sweep_dir_is_one_line_before_any_job(tmp_path):
    (tmp_path / "file").write_text("")
    sweep = tmp_path / "file" / "sweep"
    completed = run_entry_point("-m", *QUICK, "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr[-2000:]
    assert completed.stderr.strip().splitlines()[-1] == (
        f"error: cannot write to the sweep folder {sweep}: {tmp_path / 'file'} is not a folder")
    assert "Launching" not in completed.stdout + completed.stderr


def test_a_resume_file_of_another_backbone_or_attention_fails_before_data_loads(tmp_path, monkeypatch):
    checkpoint = tmp_path / "se.ckpt"
    torch.save({"state_dict": {}, "global_step": 3, "attn_zoo_model": {"backbone": "resnet56", "attention": "se"}},
               checkpoint)
    monkeypatch.setattr("attn_zoo.train.instantiate", lambda *a, **k: pytest.fail("the data module was built"))
    assert startup_error(f"resume={checkpoint}") == (
        f"resume: {checkpoint} holds another model (resnet56 + se; this run: resnet20 + none)")
