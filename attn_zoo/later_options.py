"""Options a module gained after a run was made: such a run is read as having used their defaults.

A run records the resolved config it trained with (results.json, its checkpoint). When a config
group's choice gains an option later (``conf/attention/cbam.yaml`` gains ``zero_init_spatial:
false``), the runs made before it lack the key. A new option's default must build the module as it
was before (README, "Add your own attention module"), so such a run trained with that default:
``with_later_defaults`` fills each missing key from the choice's yaml as it is now, and analysis
(``summarize``, ``report``) and resuming (``run_folder``) compare the run as if it had recorded the
key. Without it, every option added to a module split its earlier runs from new ones into rows of
their own and refused to resume them.

Only the groups whose yaml names its own choice are filled (``name: cbam`` in
``conf/<group>/cbam.yaml``: attention, backbone, data), and only with literal values (an
interpolation such as ``${oc.env:...}`` depends on where the run was made). A key missing from any
other section still reads as a setting of its own. Reads yaml only, no Hydra and no torch, so the
analysis scripts can use it.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
NAMED_GROUPS = ("attention", "backbone", "data")


@functools.lru_cache(maxsize=None)
def choice_defaults(group: str, name: str) -> dict[str, Any]:
    """The literal options of ``conf/<group>/<name>.yaml`` (``name`` and a Hydra defaults list
    aside), or {} where no yaml of that name declares ``name: <name>`` (a choice since renamed or
    removed: nothing is known about its options)."""
    try:
        options = yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(options, dict) or options.get("name") != name:
        return {}
    return {key: value for key, value in options.items()
            if key not in ("name", "defaults") and not _interpolated(value)}


def _interpolated(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_interpolated(item) for item in value.values())
    if isinstance(value, list):
        return any(_interpolated(item) for item in value)
    return isinstance(value, str) and "${" in value


def _filled(recorded: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    section = dict(recorded)
    for key, default in defaults.items():
        if key not in section:
            section[key] = copy.deepcopy(default)
        elif isinstance(section[key], dict) and isinstance(default, dict):
            section[key] = _filled(section[key], default)
    return section


def with_later_defaults(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """``config`` (a run's recorded config) with each option its attention, backbone and data choices
    have now but it lacks set to that option's default; recorded values are kept as they are."""
    if not isinstance(config, dict):
        return config
    filled = dict(config)
    for group in NAMED_GROUPS:
        section = config.get(group)
        if isinstance(section, dict) and isinstance(section.get("name"), str):
            filled[group] = _filled(section, choice_defaults(group, section["name"]))
    return filled
