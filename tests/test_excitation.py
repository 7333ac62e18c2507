import copy
import json
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import attn_zoo
from analysis.excitation import (
    CIFAR10_CLASSES, UnsafeConfig, attention_blocks, choose_blocks, choose_classes, load_data, load_model,
    record_excitations,
)
from attn_zoo.checkpoints import RUN_RECORD
from tests.helpers import QUICK, run_entry_point

ROOT = Path(__file__).resolve().parents[1]


class FunctionalGate(nn.Module):
    """A channel gate written with torch.sigmoid in forward: no gate submodule to hook."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(-2, 2, channels).view(1, channels, 1, 1))

    def forward(self, x):
        return x * torch.sigmoid(self.scale * x.mean(dim=(2, 3), keepdim=True))


class SpatialGate(nn.Module):
    """Not a channel gate: one weight per position, computed functionally."""

    def __init__(self, channels: int):
        super().__init__()

    def forward(self, x):
        return x * torch.sigmoid(x.mean(dim=1, keepdim=True))


class ChannelThenSpatial(nn.Module):
    """CBAM-like: a channel sigmoid, then a spatial sigmoid; the channel one is the weight to record."""

    def __init__(self, channels: int):
        super().__init__()
        self.channel_gate = nn.Sigmoid()
        self.spatial_gate = nn.Sigmoid()

    def forward(self, x):
        x = x * self.channel_gate(x.mean(dim=(2, 3), keepdim=True))
        return x * self.spatial_gate(x.mean(dim=1, keepdim=True))


def _holder(module: nn.Module) -> nn.Module:
    return nn.Sequential(OrderedDict(block=nn.Sequential(OrderedDict(attention=module))))


def _per_class_means(gates: torch.Tensor, labels: torch.Tensor) -> dict[int, torch.Tensor]:
    return {int(label): gates[labels == label].double().sum(0) for label in labels.unique()}


def _check(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, expected_gates: torch.Tensor) -> None:
    sums, counts, skipped = record_excitations(model, [(x, labels)], ["block"])
    assert skipped == [] and counts.tolist() == torch.bincount(labels).tolist()
    for label, expected in _per_class_means(expected_gates, labels).items():
        torch.testing.assert_close(sums["block"][label], expected, rtol=1e-5, atol=1e-6)


def test_se_gate_output_is_captured():
    torch.manual_seed(0)
    se = attn_zoo.create_attention("se", 16, reduction=4)
    x, labels = torch.randn(6, 16, 5, 5), torch.tensor([0, 1, 1, 2, 0, 1])
    squeezed = x.mean(dim=(2, 3), keepdim=True)
    expected = torch.sigmoid(se.excite.expand(torch.relu(se.excite.reduce(squeezed)))).flatten(1)
    _check(_holder(se), x, labels, expected)


def test_a_module_started_as_the_identity_records_the_scale_it_applies_not_its_inner_gate():
    """attention.init=identity (fine-tuning) scales by 1 + α·(e − 1): with α = 0.1 the inner sigmoid e
    spans 0-1 while the channels move by 10 % at most; the figure showed e."""
    torch.manual_seed(0)
    wrapped = attn_zoo.create_attention("se", 16, reduction=4, init="identity")
    with torch.no_grad():
        wrapped.scale.fill_(0.1)
    x, labels = torch.randn(6, 16, 5, 5), torch.tensor([0, 1, 1, 2, 0, 1])
    se = wrapped.module
    inner = torch.sigmoid(se.excite.expand(torch.relu(se.excite.reduce(x.mean(dim=(2, 3), keepdim=True))))).flatten(1)
    _check(_holder(wrapped), x, labels, 1 + 0.1 * (inner - 1))


def test_functional_gate_is_fitted_by_least_squares_even_with_zero_inputs():
    torch.manual_seed(1)
    gate = FunctionalGate(8)
    x, labels = torch.randn(4, 8, 3, 3), torch.tensor([0, 0, 1, 1])
    x[:, :, 0, 0] = 0  # y / x would be undefined here
    expected = torch.sigmoid(gate.scale * x.mean(dim=(2, 3), keepdim=True)).flatten(1)
    _check(_holder(gate), x, labels, expected)


def test_channel_gate_is_taken_before_a_spatial_gate():
    torch.manual_seed(2)
    x, labels = torch.randn(3, 8, 4, 4), torch.tensor([0, 1, 2])
    expected = torch.sigmoid(x.mean(dim=(2, 3)))
    _check(_holder(ChannelThenSpatial(8)), x, labels, expected)


def test_a_module_that_is_not_a_channel_gate_is_skipped():
    sums, _, skipped = record_excitations(_holder(SpatialGate(8)), [(torch.randn(2, 8, 4, 4), torch.tensor([0, 1]))],
                                          ["block"])
    assert skipped == ["block"] and sums == {}


def test_blocks_and_classes_by_name_or_index():
    model = attn_zoo.create_model("resnet20", attention="se")
    blocks = list(attention_blocks(model))
    assert blocks == [f"stages.{stage}.{index}" for stage in range(3) for index in range(3)]
    assert choose_blocks(["stages.1.0", "-1", "0"], blocks) == ["stages.1.0", "stages.2.2", "stages.0.0"]
    with pytest.raises(ValueError, match="unknown block 'stages.9.9'"):
        choose_blocks(["stages.9.9"], blocks)
    names = [str(index) for index in range(10)]
    assert choose_classes(None, names) == ["0", "3", "6", "9"]
    assert choose_classes(["cat", "2"], ["dog", "cat", "bird"]) == ["cat", "bird"]


RUN_CONFIG = {
    "attention": {"name": "se", "reduction": 8, "divisor": 8, "min_width": 8},
    "backbone": {"name": "resnet20", "shortcut": "projection"},
    "data": {"_target_": "attn_zoo.data.EmbeddedCIFAR10", "name": "embedded", "batch_size": 128, "num_workers": 0},
    "seed": 0,
}


def _rewrite_config(checkpoint, section: str, value) -> None:
    saved = torch.load(checkpoint, weights_only=True)
    saved[RUN_RECORD]["config"][section] = value
    torch.save(saved, checkpoint)


@pytest.fixture
def checkpoint(tmp_path):
    """A random-weight resnet20 + SE Lightning-style checkpoint carrying its run's config, as training
    writes it, alone in a folder of its own (no results.json anywhere)."""
    torch.manual_seed(0)
    model = attn_zoo.create_model("resnet20", attention="se", num_classes=10, reduction=8)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    state = {"model." + key: value for key, value in model.state_dict().items()}
    path = run / "checkpoints" / "last.ckpt"
    run_record = {"config": copy.deepcopy(RUN_CONFIG), "attention_variant": "se[reduction=8]"}
    torch.save({"state_dict": state, "epoch": 0, "global_step": 2, RUN_RECORD: run_record}, path)
    return path


def test_cli_writes_the_csv_and_the_figure(checkpoint, tmp_path):
    out = tmp_path / "excitation"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "excitation.py"), str(checkpoint), "--blocks", "stages.0.0", "-1",
         "--classes", "cat", "5", "--limit-batches", "1", "--batch-size", "64", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = pd.read_csv(out / "excitation.csv", dtype={"class": str})
    assert list(table.columns) == ["block", "class", "channel", "mean_weight"]
    classes = set(table["class"]) - {"all"}  # the embedded data's class folders, by name
    assert classes <= set(CIFAR10_CLASSES) and {"cat", "dog"} <= classes
    assert "all" in set(table["class"]) and len(classes) >= 2  # a seeded shuffle: several classes in 64 images
    assert len(table) == (len(classes) + 1) * (16 + 64)  # stages.0.0 has 16 channels, stages.2.2 has 64
    assert table.groupby("block")["channel"].max().to_dict() == {"stages.0.0": 15, "stages.2.2": 63}
    assert table["mean_weight"].between(0, 1).all()  # sigmoid outputs
    # the mean over all images lies within the spread of the class means, channel by channel
    spread = table[table["class"] != "all"].groupby(["block", "channel"])["mean_weight"].agg(["min", "max"])
    overall = table[table["class"] == "all"].set_index(["block", "channel"])["mean_weight"]
    assert ((overall >= spread["min"] - 1e-9) & (overall <= spread["max"] + 1e-9)).all()
    assert (out / "excitation.png").read_bytes()[:4] == b"\x89PNG" and (out / "excitation.png").stat().st_size > 1000
    assert "<svg" in (out / "excitation.svg").read_text()[:2000]


def test_cli_refuses_a_run_without_attention(checkpoint):
    _rewrite_config(checkpoint, "attention", {"name": "none"})
    completed = subprocess.run([sys.executable, str(ROOT / "analysis" / "excitation.py"), str(checkpoint)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2 and "trained without attention" in completed.stderr


def test_an_older_checkpoint_without_a_config_takes_its_results_json_by_name(checkpoint, tmp_path):
    saved = torch.load(checkpoint, weights_only=True)
    record = {"schema": 1, "status": "completed", "data": "embedded", "backbone": "resnet20", "attention": "se",
              **saved.pop(RUN_RECORD)}
    torch.save(saved, checkpoint)
    (checkpoint.parent.parent / "results.json").write_text(json.dumps(record))  # beside it: not looked for
    command = [sys.executable, str(ROOT / "analysis" / "excitation.py"), str(checkpoint), "--limit-batches", "1",
               "--batch-size", "16", "--out", str(tmp_path / "out")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2 and completed.stderr.strip().splitlines() == [
        f"error: {checkpoint} holds no run config (written before runs stored it in their checkpoints); "
        "name its run's results.json with --results"]
    completed = subprocess.run([*command, "--results", str(checkpoint.parent.parent / "results.json")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "out" / "excitation.csv").is_file()


def test_a_fused_tail_run_is_rebuilt_with_the_plain_tail_so_its_gates_are_recorded(tmp_path):
    from analysis.excitation import load_model

    config = {"backbone": {"name": "resnet20", "fused_tail": True}, "attention": {"name": "se", "reduction": 8}}
    fused = attn_zoo.create_model("resnet20", attention="se", num_classes=10, backbone_options={"fused_tail": True},
                                  reduction=8)
    checkpoint = tmp_path / "fused.ckpt"
    torch.save({"state_dict": {f"model.{key}": value for key, value in fused.state_dict().items()}}, checkpoint)
    model = load_model(torch.load(checkpoint, weights_only=True), 10, config)
    assert not any(getattr(block, "fused_tail", False) for block in model.modules())
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(x), fused.eval()(x), rtol=1e-5, atol=1e-5)  # the same function
    sums, counts, skipped = record_excitations(model, [(x, labels)], ["stages.0.0"])
    assert skipped == [] and sums["stages.0.0"].shape == (3, 16)


def _config(**sections):
    config = {"attention": {"name": "se", "reduction": 8}, "backbone": {"name": "resnet20"},
              "data": {"name": "embedded", "_target_": "attn_zoo.data.EmbeddedCIFAR10", "batch_size": 8}}
    return {**config, **sections}


def test_a_target_in_the_run_folder_is_never_called(tmp_path):
    victim = tmp_path / "created_by_results_json"
    hostile = {"name": "embedded", "_target_": "shutil.copyfile", "src": __file__, "dst": str(victim)}
    with pytest.raises(UnsafeConfig, match=r"config.data._target_ = 'shutil.copyfile' is refused: analysis never "
                                           r"instantiates what a run's config names"):
        load_data(_config(data=hostile), None)
    assert not victim.exists()
    for data in ({"name": "embedded", "_partial_": True}, {"name": "embedded", "batch_size": {"_target_": "os.getcwd"}},
                 {"name": "evil", "_target_": "attn_zoo.data.EmbeddedCIFAR10"}, {"name": "synthetic", "src": "x"}):
        with pytest.raises(UnsafeConfig):
            load_data(_config(data=data), None)
    with pytest.raises(UnsafeConfig, match="config.backbone._target_"):
        load_model({}, 10, _config(backbone={"name": "resnet20", "_target_": "os.remove"}))
    with pytest.raises(KeyError, match="unknown backbone 'os.remove'"):
        load_model({}, 10, _config(backbone={"name": "os.remove"}))


class _Payload:
    """Unpickled, it creates ``path``: what a CIFAR batch file in a foreign run folder could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_where_the_data_lie_is_never_taken_from_the_run_folder(tmp_path, checkpoint):
    """torchvision reads CIFAR's python batches with pickle (checksums off here): a config naming a
    folder of crafted batches ran their code. The path now comes from --data-root, never the run."""
    import pickle

    victim, batches = tmp_path / "created_by_a_pickle", tmp_path / "shared_run" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (batches / name).write_bytes(pickle.dumps(_Payload(victim)))
    cifar = {"name": "cifar10", "_target_": "attn_zoo.data.CIFAR10", "root": str(batches.parent), "download": True,
             "batch_size": 8}
    with pytest.raises(UnsafeConfig, match=rf"the run read its data at data.root={batches.parent}; .* pass --data-root"):
        load_data(_config(data=cifar), None)
    _rewrite_config(checkpoint, "data", cifar)
    completed = subprocess.run([sys.executable, str(ROOT / "analysis" / "excitation.py"), str(checkpoint)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2 and "pass --data-root" in completed.stderr, completed.stderr[-2000:]
    assert not victim.exists()


def test_the_cli_refuses_a_hostile_checkpoint_config_in_one_line(checkpoint, tmp_path):
    victim = tmp_path / "created_by_the_config"
    _rewrite_config(checkpoint, "data", {"name": "embedded", "_target_": "shutil.copyfile", "src": str(checkpoint),
                                         "dst": str(victim)})
    completed = subprocess.run([sys.executable, str(ROOT / "analysis" / "excitation.py"), str(checkpoint)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2 and not victim.exists()
    assert completed.stderr.strip().splitlines() == [
        f"error: {checkpoint}: config.data._target_ = 'shutil.copyfile' is refused: analysis never instantiates "
        "what a run's config names; it builds only registered names"
    ]


def test_embedded_classes_by_name_or_index():
    datamodule = load_data(_config(), None)
    from analysis.excitation import dataset_classes

    names = dataset_classes(datamodule)
    assert names == list(CIFAR10_CLASSES)
    assert choose_classes(["cat", "0", "truck"], names) == ["cat", "airplane", "truck"]
    with pytest.raises(ValueError, match="unknown class 'kitten'; classes: airplane, automobile"):
        choose_classes(["kitten"], names)


def test_a_trained_checkpoint_copied_alone_is_enough(tmp_path):
    out = tmp_path / "run"
    completed = run_entry_point(*QUICK, "attention=se", f"hydra.run.dir={out}", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    results = json.loads((out / "results.json").read_text())
    assert saved[RUN_RECORD]["config"] == results["config"]
    assert saved[RUN_RECORD]["attention_variant"] == results["attention_variant"]
    alone = tmp_path / "elsewhere" / "copy.ckpt"
    alone.parent.mkdir()
    shutil.copy(out / "checkpoints" / "last.ckpt", alone)
    completed = subprocess.run([sys.executable, str(ROOT / "analysis" / "excitation.py"), str(alone),
                                "--limit-batches", "1", "--batch-size", "16"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "elsewhere" / "excitation" / "excitation.csv").is_file()


class ScalesUntilAsked(nn.Module):
    """A channel scaling (fitted exactly) until ``breaks`` is set: then not one (the fit fails)."""

    def __init__(self):
        super().__init__()
        self.breaks = False

    def forward(self, x):
        return x.flip(-1) if self.breaks else x * 0.5


def test_a_gate_that_stops_fitting_part_way_is_skipped_not_averaged_over_too_many_images():
    model = nn.Sequential(OrderedDict(block=nn.Sequential(OrderedDict(attention=ScalesUntilAsked()))))

    def batches():
        yield torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
        model.block.attention.breaks = True
        yield torch.randn(2, 3, 4, 4), torch.tensor([0, 1])

    sums, counts, skipped = record_excitations(model, batches(), ["block"])
    assert skipped == ["block"] and "block" not in sums and counts.tolist() == [2, 2]


def test_a_fine_tuned_run_is_rebuilt_without_its_pretrained_file(checkpoint):
    """backbone.weights names the file the run started from, on the machine it trained on; the
    checkpoint's weights replace it, so it is neither needed nor read."""
    config = copy.deepcopy(RUN_CONFIG)
    config["backbone"]["weights"] = "/nonexistent/resnet20.pth"
    model = load_model(torch.load(checkpoint, weights_only=True), 10, config)
    assert attention_blocks(model)


@pytest.mark.parametrize("data", [
    {"_target_": "attn_zoo.data.EmbeddedCIFAR10", "name": "embedded", "batch_size": 8, "num_workers": 0,
     "loader": "gpu"},
    {"_target_": "attn_zoo.data.ImageFolder", "name": "imagefolder", "root": "TREE", "image_size": 32,
     "augment": "imagenet", "batch_size": 4, "num_workers": 0, "loader": "gpu"},
], ids=["device_resident", "device_decoded"])
def test_runs_trained_with_a_device_loader_are_read_through_the_host_path(tmp_path, data):
    """data.loader=gpu's validation batches are JPEG bytes or need a Trainer's device: the analysis
    reads the same images through the host path (it stopped with a traceback), limited or not."""
    from analysis.excitation import validation_batches
    from attn_zoo.tools import jpeg_folder

    location = {}
    if data.get("root") == "TREE":
        jpeg_folder.make_folder(tmp_path, classes=10, train_per_class=1, val_per_class=1)
        data, location = {**data, "root": "/elsewhere"}, {"root": str(tmp_path)}
    datamodule = load_data({"data": data}, batch_size=None, location=location)
    for limit in (None, 1):
        images, labels = next(iter(validation_batches(datamodule, limit)))
        assert isinstance(images, torch.Tensor) and images.shape[1:] == (3, 32, 32) and len(labels) == len(images)


def test_the_batch_size_asked_for_is_the_validation_batch_size_even_where_the_run_set_one():
    """--batch-size set data.batch_size, but the run's recorded data.eval_batch_size (the GPU tables
    validate in batches of 1,000) decides validation batches: the option did nothing there."""
    from analysis.excitation import validation_batches
    data = {"_target_": "attn_zoo.data.EmbeddedCIFAR10", "name": "embedded", "batch_size": 8, "num_workers": 0,
            "eval_batch_size": 1000}
    for asked, expected in ((None, 1000), (16, 16)):
        datamodule = load_data({"data": data}, batch_size=asked)
        for limit in (None, 1):
            images, _ = next(iter(validation_batches(datamodule, limit)))
            assert len(images) == expected


def test_the_analysis_scripts_import_no_training_code():
    """README: analysis never imports training code. excitation took one string from
    attn_zoo.checkpoints, and with it Lightning."""
    code = ("import sys; import analysis.excitation, analysis.summarize, analysis.plots, analysis.report, "
            "analysis.results_md; print(sorted(m for m in ('lightning', 'hydra', 'attn_zoo.train', 'attn_zoo.lit', "
            "'attn_zoo.checkpoints') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "[]"
