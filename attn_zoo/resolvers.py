"""OmegaConf resolvers used by the configs; registered once, before Hydra composes anything."""
from omegaconf import OmegaConf


def linear_lr(base_lr: float, batch_size: int, devices: int | str | list = 1, nodes: int = 1,
              accumulate: int | None = 1) -> float:
    """Goyal et al. 2017: lr = base_lr × global batch / 256, the global batch being the per-device
    batch × devices × nodes × the batches accumulated into one optimiser step (``None``, an unset
    ``trainer.accumulate_grad_batches``, is Lightning's 1). ``devices`` as Lightning's
    ``trainer.devices`` reads it: a count, -1 or ``"auto"`` for the visible CUDA devices (one without
    them), a list of device ids or a string of them (``"0,1"``: two; ``"2"``: a count)."""
    return base_lr * batch_size * device_count(devices) * max(1, nodes) * max(1, accumulate or 1) / 256


def device_count(devices: int | str | list) -> int:
    if isinstance(devices, str):
        devices = devices.strip()
        if devices == "auto" or devices == "-1":
            devices = -1
        elif "," in devices:
            return len([part for part in devices.split(",") if part.strip()])
        else:
            devices = int(devices)
    if not isinstance(devices, int):  # a list of ids (a ListConfig from a yaml too)
        return max(1, len(list(devices)))
    if devices == -1:
        import torch

        return max(1, torch.cuda.device_count())
    return max(1, devices)


def register() -> None:
    if not OmegaConf.has_resolver("linear_lr"):
        OmegaConf.register_new_resolver("linear_lr", linear_lr)


register()
