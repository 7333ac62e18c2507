"""The bench's settings: ``conf/bench.yaml`` composed with the overrides, checked."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from attn_zoo import config
from attn_zoo.registry import ATTENTION, BACKBONES


MODES = ("eager", "compiled")
MEASURES = ("train", "infer")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Settings:
    backbones: tuple[str, ...]
    attentions: tuple[str, ...]
    batch_size: int
    image_size: int
    modes: tuple[str, ...]
    measure: tuple[str, ...]
    compile_mode: str | None
    dtype: str
    channels_last: bool
    device: str
    warmup: int
    iters: int
    windows: int
    timm: bool
    fused_tail: bool | str | tuple
    profile: bool
    compile_jobs: int
    out: str

    @classmethod
    def from_config(cls, cfg: Any) -> "Settings":
        values = {name: cfg[name] for name in cls.__dataclass_fields__}
        for name in ("backbones", "attentions", "modes", "measure"):
            values[name] = tuple(values[name])
        if not isinstance(values["fused_tail"], (bool, str)):
            values["fused_tail"] = tuple(values["fused_tail"])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        for name in self.backbones:
            BACKBONES.get(name)
        for name in self.attentions:
            ATTENTION.get(name)
        if not set(self.modes) <= set(MODES):
            raise ValueError(f"modes must be among {', '.join(MODES)}; got {list(self.modes)}")
        if not self.measure or not set(self.measure) <= set(MEASURES):
            raise ValueError(f"measure must be a non-empty list among {', '.join(MEASURES)}; got {list(self.measure)}")
        if self.device.startswith("cuda:") and self.device != "cuda:0":
            # torch.utils.benchmark's Timer synchronises the current device only: a window timed on
            # another would end before that device's work did
            raise ValueError(f"device={self.device}: time one GPU as the current device, "
                             f"CUDA_VISIBLE_DEVICES={self.device[5:]} with device=cuda")
        if self.dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype must be auto, {' or '.join(DTYPES)}; got {self.dtype}")
        for name in ("batch_size", "image_size", "iters", "windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        fused_tail_options(self.fused_tail)
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.compile_jobs < 0:
            raise ValueError(f"compile_jobs must be >= 0, got {self.compile_jobs}")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]

    def timing(self) -> str:
        return f"median of {self.windows} windows x {self.iters} steps after {self.warmup} warm-up"


def fused_tail_options(setting: Any) -> list[bool | str]:
    """The ``backbone.fused_tail`` values a bench's ``fused_tail`` asks for: false, true, triton or a list."""
    from attn_zoo.fused.bn_se_tail import tail_kernels

    options = [] if setting is False else list(setting) if isinstance(setting, (list, tuple)) else [setting]
    for option in options:
        tail_kernels(option)  # raises ValueError for anything else
    return [option for option in options if option is not False]


def compose(overrides: Sequence[str]) -> Any:
    """``conf/bench.yaml`` with ``overrides`` (a preset from ``conf/bench/`` first)."""
    return config.compose(overrides, config_name="bench")
