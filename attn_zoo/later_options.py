"""Options a module gained after runs were made with it: such a run is read as having used the
value that builds the module as it was before.

A run records the resolved config it trained with (results.json, its checkpoint). When a config
group's choice gains an option (``conf/attention/cbam.yaml`` gained ``zero_init_spatial``), the runs
made before it lack the key. ``LATER_OPTIONS`` lists each such option with the value that builds the
choice exactly as before it existed, and ``with_later_defaults`` fills a run's missing keys from it,
so that analysis (``summarize``, ``report``) and resuming (``run_folder``) compare the run as if it
had recorded the key. Without it, every option added to a module split its earlier runs from new ones
into rows of their own and refused to resume them.

The values are frozen here, not read from the yaml: a yaml's default may change later, and the runs
made before the option still used the old behaviour. An option added without an entry leaves the
earlier runs apart (a row of their own, a refused resume): visible, never a silent merge;
tests/test_later_options.py fails where a run committed under ``results/`` lacks an option its
choice's yaml has and this table does not list. The key ``(group, "*")`` is for an option every
choice of a group gained (``conf/config.yaml``'s shared ``attention:`` options). Plain Python, no
Hydra and no torch, so the analysis scripts can use it.
"""
from __future__ import annotations

import copy
from typing import Any

# (group, choice name) -> {option: the value that builds the choice as before the option existed}
LATER_OPTIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("attention", "cbam"): {"zero_init_spatial": False},
    ("attention", "cbam_spatial"): {"zero_init_spatial": False},
    ("attention", "srm"): {"exempt_from_decay": False},
    ("attention", "triplet"): {"zero_init_spatial": False},
}


def earlier_values(group: str, name: str) -> dict[str, Any]:
    """The options ``name`` of ``group`` gained later, each with the value that builds it as before."""
    return {**LATER_OPTIONS.get((group, "*"), {}), **LATER_OPTIONS.get((group, name), {})}


def with_later_defaults(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """``config`` (a run's recorded config) with each option of ``LATER_OPTIONS`` that its choices
    gained but it lacks set to the value that builds them as before; recorded values are kept."""
    if not isinstance(config, dict):
        return config
    filled = dict(config)
    for group in {group for group, _ in LATER_OPTIONS}:
        section = config.get(group)
        if isinstance(section, dict) and isinstance(section.get("name"), str):
            missing = {key: value for key, value in earlier_values(group, section["name"]).items() if key not in section}
            filled[group] = {**section, **copy.deepcopy(missing)}
    return filled
