"""Values and files that can be checked before data loads are checked then, in one line (issue 17):
schedules, optimiser ranges, integer options, resume files, the run folder; runs with nothing to
train or validate; image trees with symlink loops, unreadable or oversized images."""
import json

import pytest
import torch
from PIL import Image

from attn_zoo.config_check import ConfigError
from attn_zoo.data.imagefolder import ImageFolder, load_rgb
from attn_zoo.train import run
from tests.helpers import IMAGEFOLDER, QUICK, compose_run, image, image_tree, run_entry_point, startup_error


@pytest.mark.parametrize("overrides, expected", [
    (["sched=multistep", "sched.gamma=-0.1"], "sched.gamma must be > 0, got -0.1"),
    (["sched.min_factor=1.5"], "sched.min_factor must be in [0, 1], got 1.5"),
    (["sched.warmup_epochs=3"], "sched.warmup_epochs (trainer.max_epochs=1) must be in [0, 1], got 3"),
    (["optim.momentum=1.5"], "optim.momentum must be in [0, 1), got 1.5"),
    (["optim=adamw", "optim.betas=[0.9,1.2]"], "optim.betas[1] must be in [0, 1), got 1.2"),
    (["optim=adamw", "optim.betas=[0.9]"], "optim.betas must be two numbers in [0, 1)"),
    (["sched=multistep", "sched.milestones=[50,75]"], "sched.milestones are fractions of the run in (0, 1)"),
    (["attention=se", "attention.divisor=2.5"], "attention.divisor must be an integer >= 1, got 2.5"),
    (["seed=1.5"], "seed must be an integer in [0, 2**32), got 1.5"),
    (["seed=-1"], "seed must be an integer in [0, 2**32), got -1"),
    (["trainer.limit_val_batches=0"], "trainer.limit_val_batches=0 would validate on nothing"),
    (["trainer.limit_train_batches=0.0"], "trainer.limit_train_batches=0.0 would train on nothing"),
])
def test_bad_values_fail_before_data_loads(overrides, expected):
    assert expected in startup_error(*overrides)


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
