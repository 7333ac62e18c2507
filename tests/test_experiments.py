"""The experiments (conf/experiment): each paper-table experiment composes as a multirun whose sweep
lists that table's choices, every swept choice builds a working model with the paper's parameter
count, and the training recipes hold their papers' settings."""
import subprocess
import sys

import pytest
import torch
from hydra.types import RunMode

import attn_zoo
import attn_zoo.resolvers  # noqa: F401  (${linear_lr:...} in the ImageNet recipe)
from attn_zoo.config import build_model, compose, options
from attn_zoo.cost import count_attention_params, count_params
from tests.helpers import ROOT, sweep_params

CONF = ROOT / "conf"

EXPERIMENTS = {
    "se_table10": ("se", "attention.reduction", ["2", "4", "8", "16", "32"]),
    "se_table11": ("se", "attention.squeeze", ["max", "avg"]),
    "se_table12": ("se", "attention.gate", ["relu", "tanh", "sigmoid"]),
    "cbam_table1": ("cbam_channel", "attention.squeeze", ["avg", "max", "avgmax"]),
    "cbam_table2": ("cbam", "attention.kernel_size", ["3", "7"]),
    "cbam_table3": ("cbam", "attention.order", ["channel_spatial", "spatial_channel", "parallel"]),
}


def compose_experiment(name: str, *overrides: str):
    return compose([f"+experiment={name}", *overrides], hydra_config=True)


def test_every_attention_table_experiment_is_checked_here():
    tables = {path.stem for path in (CONF / "experiment").glob("*.yaml")} - {"se_table13", "se_table14", "se_table15"}
    assert sorted(name for name in tables if "table" in name) == sorted(EXPERIMENTS)


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_is_a_sweep_over_the_table_choices(experiment):
    attention, key, choices = EXPERIMENTS[experiment]
    cfg = compose_experiment(experiment)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.attention.name == attention
    params = cfg.hydra.sweeper.params
    assert set(params) == {key, "seed"}
    assert str(params[key]).split(",") == choices
    assert str(params.seed).split(",") == ["0", "1", "2"]
    if experiment.startswith("se"):  # the paper's §6: label smoothing (ε 0.1, its ref. [20]'s)
        assert cfg.label_smoothing == 0.1
    paper = "Squeeze-and-Excitation Networks" if experiment.startswith("se") else "CBAM"
    table = experiment.split("table")[1]
    header = (CONF / "experiment" / f"{experiment}.yaml").read_text().splitlines()[:2]
    assert header[0] == "# @package _global_" and paper in header[1] and f"Table {table}:" in header[1]


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_every_swept_choice_builds_a_model(experiment):
    _, key, choices = EXPERIMENTS[experiment]
    x = torch.randn(1, 3, 32, 32)
    for choice in choices:
        cfg = compose_experiment(experiment, f"{key}={choice}")
        assert str(cfg[key.split(".")[0]][key.split(".")[1]]) == choice
        assert build_model(cfg, num_classes=10)(x).shape == (1, 10)


def test_reduction_sweep_uses_the_exact_width_so_each_r_differs():
    sizes = [
        count_attention_params(build_model(compose_experiment("se_table10", f"attention.reduction={r}"), 10))
        for r in EXPERIMENTS["se_table10"][2]
    ]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    # ResNet-20, three blocks per stage, r = 32: d = C/r rounded, at least 1 (16 → 1, 32 → 1, 64 → 2);
    # no FC biases (the paper's ablations)
    assert sizes[-1] == 3 * sum(2 * c * d for c, d in ((16, 1), (32, 1), (64, 2)))


@pytest.mark.parametrize(
    "experiment,key,values,params",
    [
        # the tables' own SE block (exact C/r, no FC biases): the yamls' 25.58M, 25.69M, 26.34M, 28.07M, 25.71M
        ("se_table13", "backbone.stages", [[1], [2], [3], [1, 2, 3, 4]], [25_581_608, 25_688_104, 26_343_464, 28_071_976]),
        ("se_table14", "backbone.placement", ["standard", "pre", "post", "identity"], [28_071_976, 27_548_200, 28_071_976, 28_071_976]),
        ("se_table15", "backbone.placement", ["standard", "3x3"], [28_071_976, 25_714_216]),
    ],
)
def test_se_paper_experiments_sweep_the_right_thing(experiment, key, values, params):
    cfg = compose([f"+experiment={experiment}"], hydra_config=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert (cfg.backbone.name, cfg.attention.name) == ("resnet50", "se")
    assert sweep_params(cfg) == {key: values, "seed": [0, 1, 2]}  # as tables 10-12 and CBAM's
    assert cfg.label_smoothing == 0.1 and not cfg.attention.mlp_bias  # the paper's §6
    option = key.split(".")[1]
    for value, expected in zip(values, params):
        backbone_options = {**options(cfg.backbone), option: value}
        with torch.device("meta"):
            model = attn_zoo.create_model("resnet50", "se", backbone_options=backbone_options,
                                          **options(cfg.attention))
        assert count_params(model) == expected


# ---------------------------------------------------------------- training recipes


def test_cifar_resnet_recipe_is_he_et_al():
    cfg = compose(["+experiment=cifar_resnet"])
    assert (cfg.data.name, cfg.backbone.name, cfg.data.batch_size) == ("cifar10", "resnet20", 128)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 1e-4)
    assert cfg.sched._target_.endswith("multistep") and list(cfg.sched.milestones) == [0.5, 0.75]
    assert cfg.trainer.max_epochs == 164 and cfg.trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("table, params, warmup", [("classic", 269_722, 0), ("preresnet110", 1_727_962, 1)])
def test_the_classic_reproduction_tables_are_the_papers_networks(table, params, warmup):
    """Option A shortcuts (identity, zero-padded: ResNet-20 has the plain net's 269,722 parameters, as in
    the paper); for ResNet-110, the SE paper's baseline (the pre-activation net of He et al. 2016b) and a
    warm-up in place of He et al.'s 400 iterations at lr 0.01."""
    from attn_zoo.backbones.preact_cifar import PreActCifarNet
    from attn_zoo.tools.reproduce import TABLES

    overrides = [o for o in TABLES[table].overrides if "," not in o]  # the sweeps' values aside
    cfg = compose([*overrides, "attention=none"])
    assert cfg.backbone.shortcut == "pad" and cfg.sched.warmup_epochs == warmup
    model = build_model(cfg, num_classes=10)
    assert count_params(model) == params and isinstance(model, PreActCifarNet) == (table == "preresnet110")


@pytest.mark.parametrize("table", [f"se_table{n}" for n in range(10, 16)])
def test_the_se_ablation_tables_use_the_paper_s_se_block(table):
    """Hu et al. §6: no biases in the excitation's FC layers, and the width C/r exactly."""
    attention = compose([f"+experiment={table}"]).attention
    assert (attention.mlp_bias, attention.divisor, attention.min_width) == (False, 1, 1)


def test_short_cifar_preset_keeps_the_recipe_but_shortens_it():
    cfg = compose(["+experiment=cifar_resnet_short"])
    assert cfg.trainer.max_epochs == 30 and cfg.sched._target_.endswith("cosine")
    assert cfg.data.loader == "gpu" and cfg.optim.lr == 0.1


@pytest.mark.parametrize("batch,devices,expected", [(256, 1, 0.1), (512, 2, 0.4), (1024, 8, 3.2)])
def test_imagenet_lr_scales_linearly_with_the_global_batch(batch, devices, expected):
    cfg = compose(["+experiment=imagenet_resnet50", "data.root=/data/imagenet", f"data.batch_size={batch}",
                   f"trainer.devices={devices}"])
    assert cfg.optim.lr == pytest.approx(expected)
    assert cfg.trainer.max_epochs == 90 and cfg.optim.weight_decay == 1e-4 and cfg.backbone.name == "resnet50"


@pytest.mark.parametrize("visible,expected", [(4, 0.8), (0, 0.2)])
def test_imagenet_lr_with_all_devices_counts_the_visible_gpus(visible, expected, monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: visible)
    cfg = compose(["+experiment=imagenet_resnet50", "data.root=/data/imagenet", "data.batch_size=512",
                   "trainer=ddp", "trainer.devices=-1"])
    assert cfg.optim.lr == pytest.approx(expected)  # 0.1 × 512 × max(1, visible) / 256


@pytest.mark.parametrize("devices,expected", [("[0,1,2,3]", 0.8), ("'0,1'", 0.4), ("'2'", 0.4), ("auto", 0.8)])
def test_imagenet_lr_counts_devices_given_as_lightning_takes_them(devices, expected, monkeypatch):
    """A list of ids, a string of ids or a count, and "auto" (the visible GPUs): the resolver took
    only an int and raised a TypeError on the others."""
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    cfg = compose(["+experiment=imagenet_resnet50", "data.root=/data/imagenet", "data.batch_size=512",
                   "trainer=ddp", f"trainer.devices={devices}"])
    assert cfg.optim.lr == pytest.approx(expected)  # 0.1 × 512 × devices / 256


@pytest.mark.parametrize("accumulate,expected", [(None, 0.2), (1, 0.2), (4, 0.8)])
def test_imagenet_lr_counts_accumulated_batches_in_the_global_batch(accumulate, expected):
    """Four batches of 512 accumulated into one step are a global batch of 2048: the resolver took
    only the devices and nodes, so the lr stayed that of 512."""
    extra = [] if accumulate is None else [f"+trainer.accumulate_grad_batches={accumulate}"]
    cfg = compose(["+experiment=imagenet_resnet50", "data.root=/data/imagenet", "data.batch_size=512", *extra])
    assert cfg.optim.lr == pytest.approx(expected)  # 0.1 × 512 × accumulate / 256


def test_compose_resolves_the_recipes_resolvers_in_a_process_of_its_own():
    """attn_zoo.config.compose said it gives the config as run.py sees it, but only run.py registered
    ${linear_lr:...}: in another process the ImageNet recipe's lr could not be resolved."""
    code = ("from attn_zoo.config import compose, container; "
            "print(container(compose(['+experiment=imagenet_resnet50', 'data.root=/x']).optim)['lr'])")
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert float(completed.stdout.strip().splitlines()[-1]) == pytest.approx(0.1)
