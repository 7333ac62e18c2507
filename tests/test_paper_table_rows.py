"""The paper-table experiments summarise to one row per row of the paper's table.

Each sweep point of ``conf/experiment/<table>.yaml`` is composed with Hydra's compose API, as the
sweeper would expand it, and written as training writes results.json (the resolved config, the
variant label, the model's own params and FLOPs counted on the meta device); two seeds per point.
"""
import functools
import itertools
import json

import pytest
import torch
from omegaconf import OmegaConf

import attn_zoo
from analysis.summarize import scan, summarize
from attn_zoo.config import compose
from attn_zoo.cost import count_flops, count_params
from attn_zoo.results import variant_label
from tests.helpers import sweep_params

# table: the swept key and how many rows its sweep makes (the paper's rows this project can build)
TABLES = {
    "se_table10": ("attention.reduction", 5), "se_table11": ("attention.squeeze", 2),
    "se_table12": ("attention.gate", 3), "se_table13": ("backbone.stages", 4),
    "se_table14": ("backbone.placement", 4), "se_table15": ("backbone.placement", 2),
    "cbam_table1": ("attention.squeeze", 3), "cbam_table2": ("attention.kernel_size", 2),
    "cbam_table3": ("attention.order", 3),
}


def _override(key: str, value) -> str:
    return f"{key}={json.dumps(value, separators=(',', ':')) if isinstance(value, list) else value}"


def _points(experiment: str) -> list[list[str]]:
    """Every job of the sweep as its overrides, with seeds 0 and 1."""
    params = {**sweep_params(compose([f"+experiment={experiment}"], hydra_config=True)), "seed": [0, 1]}  # two seeds are enough to average
    keys = list(params)
    return [[_override(key, value) for key, value in zip(keys, values)]
            for values in itertools.product(*(params[key] for key in keys))]


def _record(experiment: str, overrides: list[str], folder: str) -> dict:
    """results.json of one job, as training would write it (model counted, not trained)."""
    cfg = compose([f"+experiment={experiment}", *overrides])
    cfg.paths.output_dir = folder
    config = OmegaConf.to_container(cfg, resolve=True)
    backbone = {k: v for k, v in config["backbone"].items() if k != "name"}
    attention = {k: v for k, v in config["attention"].items() if k != "name"}
    params, flops = _costs(json.dumps([cfg.backbone.name, backbone, cfg.attention.name, attention]))
    variant = variant_label(cfg.attention.name, attention, attn_zoo.attention_defaults(cfg.attention.name))
    return {
        "schema": 1, "status": "completed", "data": cfg.data.name, "backbone": cfg.backbone.name,
        "attention": cfg.attention.name, "attention_variant": variant, "attention_options": attention,
        "seed": cfg.seed, "top1": 50.0 + cfg.seed, "top5": 90.0, "params": params, "flops": flops,
        "config": config,
    }


@functools.lru_cache(maxsize=None)
def _costs(model_json: str) -> tuple[int, int]:
    """Params and FLOPs of a model (built on the meta device: no memory, no weights)."""
    backbone, backbone_options, attention, attention_options = json.loads(model_json)
    with torch.device("meta"):
        model = attn_zoo.create_model(backbone, attention, 10, backbone_options=backbone_options,
                                      **attention_options)
    return count_params(model), count_flops(model, (3, 32, 32))


@pytest.mark.parametrize("experiment", sorted(TABLES))
def test_a_paper_table_sweep_prints_one_row_per_paper_row(experiment, tmp_path):
    key, paper_rows = TABLES[experiment]
    records = [(_record(experiment, overrides, str(tmp_path / str(job))), f"job{job}")
               for job, overrides in enumerate(_points(experiment))]
    runs = scan([], records).runs
    table = summarize(runs)
    assert len(table) == paper_rows, table["attention"].tolist()
    assert table["n"].tolist() == [len(records) // paper_rows] * paper_rows  # every seed of a row, no other
    option = key.split(".", 1)[1]
    assert sum(f"{option}=" in label for label in table["attention"]) >= paper_rows - 1  # the default may go unsaid
    for _, row in table.iterrows():  # each row carries its own model's params and FLOPs
        own = runs[runs["attention"] == row["attention"]]
        assert set(zip(own["params"], own["flops"])) == {(row["params"], row["flops"])}, row["attention"]
    if experiment == "se_table13":  # SE in one stage at a time: every row a different model
        assert table["params"].nunique() == 4 and table["flops"].nunique() == 4
    if experiment == "se_table14":  # of the four placements only SE-PRE changes the parameter count
        assert table["params"].nunique() == 2
