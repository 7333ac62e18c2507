"""Entry point: ``python run.py attention=se backbone=resnet20`` (``-m`` for a sweep)."""
import hydra
from omegaconf import DictConfig

import attn_zoo.resolvers  # noqa: F401  (config resolvers such as ${linear_lr:...})


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from attn_zoo.train import run  # imported here so `--help` and config errors come fast

    return run(cfg).get("best_top1")


if __name__ == "__main__":
    main()
