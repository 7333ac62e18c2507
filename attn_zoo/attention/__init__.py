"""Attention modules, one file per family. Importing this package registers every module in it.

Each module follows one constructor convention: ``Module(channels, *, option=default, ...)``,
takes an ``(N, C, H, W)`` tensor and returns one of the same shape.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
