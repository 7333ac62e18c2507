"""From Hydra config to objects, in one place: compose ``conf/``, read a group's options, build the
model and the data module. ``train``, ``summary``, ``tools.loader_speed`` and the bench use these, so
"a group minus its registry ``name``" means the same thing everywhere."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

import attn_zoo.resolvers  # noqa: F401  (${linear_lr:...}: compose resolves as run.py does)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: Sequence[str] = (), config_name: str = "config", hydra_config: bool = False) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, as ``run.py`` (or the bench) would see it;
    ``hydra_config`` keeps the ``hydra`` node (sweeps, launcher)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=hydra_config)


def container(node: DictConfig | Mapping) -> dict[str, Any]:
    """A config node as plain Python values, interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def options(group: DictConfig | Mapping) -> dict[str, Any]:
    """A registry group's options: its entries other than its registry ``name``."""
    return {key: value for key, value in container(group).items() if key != "name"}


def build_model(cfg: DictConfig | Mapping, num_classes: int | None = None):
    """The model of a run config's ``backbone`` and ``attention`` groups, by registry names."""
    import attn_zoo

    backbone, attention = cfg["backbone"], cfg["attention"]
    return attn_zoo.create_model(
        backbone["name"], attention=attention["name"], num_classes=num_classes,
        backbone_options=options(backbone), **options(attention),
    )


def build_datamodule(data: DictConfig):
    """The data group instantiated whole: its ``_target_`` with every other entry, ``name`` included, as
    arguments."""
    from hydra.utils import instantiate

    return instantiate(data)
