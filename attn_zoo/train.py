"""One training run from a resolved config: config → model → trainer → results.json."""
from __future__ import annotations

import logging
import platform
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import attn_zoo
from attn_zoo import profile
from attn_zoo.lit import Classifier
from attn_zoo.results import FILENAME, SCHEMA, variant_label, write_json_atomic

log = logging.getLogger(__name__)


def _log_lightning_once() -> None:
    """Lightning adds its own console handler; route its records through the app's logging only."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def _options(group: DictConfig) -> dict[str, Any]:
    """A config group's entries other than its registry ``name``."""
    return {key: value for key, value in OmegaConf.to_container(group, resolve=True).items() if key != "name"}


def build_model(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    return attn_zoo.create_model(
        cfg.backbone.name,
        attention=cfg.attention.name,
        num_classes=num_classes,
        backbone_options=_options(cfg.backbone),
        **_options(cfg.attention),
    )


def _describe(cfg: DictConfig, model: torch.nn.Module, image_shape) -> dict[str, Any]:
    attention_options = _options(cfg.attention)
    flops = profile.count_flops(model, image_shape)
    return {
        "schema": SCHEMA,
        "status": "running",
        "data": cfg.data.name,
        "backbone": cfg.backbone.name,
        "attention": cfg.attention.name,
        "attention_options": attention_options,
        "attention_variant": variant_label(
            cfg.attention.name, attention_options, attn_zoo.attention_defaults(cfg.attention.name)
        ),
        "seed": cfg.seed,
        "params": profile.count_params(model),
        "attention_params": profile.count_attention_params(model),
        "flops": flops,
        "macs": flops // 2,
        "flops_convention": profile.FLOP_CONVENTION,
        "image_shape": list(image_shape),
        "torch_version": torch.__version__,
        "host": platform.node(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def _metrics(history: list[dict[str, float]]) -> dict[str, Any]:
    if not history:
        return {"epochs": 0}
    best = max(history, key=lambda row: row["top1"])
    return {
        "epochs": len(history),
        "top1": history[-1]["top1"],
        "top5": history[-1]["top5"],
        "best_top1": best["top1"],
        "best_top5": best["top5"],
        "best_epoch": best["epoch"],
        "history": history,
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one model as ``cfg`` says and write ``results.json`` into ``cfg.paths.output_dir``."""
    output_dir = Path(cfg.paths.output_dir)
    results_path = output_dir / FILENAME
    _log_lightning_once()
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate({k: v for k, v in cfg.data.items() if k != "name"})
    model = build_model(cfg, datamodule.num_classes)
    results = _describe(cfg, model, datamodule.image_shape)
    write_json_atomic(results_path, results)

    module = Classifier(model, datamodule.num_classes, instantiate(cfg.optim), instantiate(cfg.sched))
    loggers = [instantiate(logger) for logger in (cfg.get("logger") or {}).values()]
    trainer = instantiate(cfg.trainer, logger=loggers or False)
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule)
    except BaseException as error:
        results.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
        raise
    else:
        results["status"] = "completed"
    finally:
        results["wall_time_s"] = time.perf_counter() - started
        results.update(_metrics(module.history))
        write_json_atomic(results_path, results)
    log.info(
        "%s + %s: top-1 %.2f %% (best %.2f %%), %d params, results in %s",
        results["backbone"], results["attention_variant"], results.get("top1", float("nan")),
        results.get("best_top1", float("nan")), results["params"], results_path,
    )
    return results
