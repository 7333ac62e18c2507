"""OmegaConf resolvers used by the configs; registered once, before Hydra composes anything."""
from omegaconf import OmegaConf


def linear_lr(base_lr: float, batch_size: int, devices: int = 1, nodes: int = 1) -> float:
    """Goyal et al. 2017: lr = base_lr × global batch / 256, the global batch being the per-device
    batch × devices × nodes. ``devices=-1`` counts the visible CUDA devices, as Lightning does."""
    if devices == -1:
        import torch

        devices = torch.cuda.device_count()
    replicas = max(1, devices) * max(1, nodes)
    return base_lr * batch_size * replicas / 256


def register() -> None:
    if not OmegaConf.has_resolver("linear_lr"):
        OmegaConf.register_new_resolver("linear_lr", linear_lr)


register()
