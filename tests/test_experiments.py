"""Each paper-table experiment composes as a multirun whose sweep lists that table's choices, and
every swept choice builds a working model."""
from pathlib import Path

import pytest
import torch

from attn_zoo.config import build_model, compose
from attn_zoo.cost import count_attention_params

CONF = Path(__file__).resolve().parents[1] / "conf"

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
    # ResNet-20, three blocks per stage, r = 32: d = C/r rounded, at least 1 (16 → 1, 32 → 1, 64 → 2)
    assert sizes[-1] == 3 * sum(2 * c * d + d + c for c, d in ((16, 1), (32, 1), (64, 2)))
