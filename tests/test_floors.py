"""The lowest versions pyproject.toml allows are the ones `make test-floor` installs (.ci/floors.txt),
so the floors it declares are floors the suite has passed on, not guesses."""
import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
# the floor suite keeps the pinned torch builds (PyPI's older ones are CUDA builds of gigabytes): their
# floors are read from the APIs the code calls (README, "Installing into an existing environment")
UNTESTED_FLOORS = {"torch", "torchvision"}


def declared_floors() -> dict[str, str]:
    """``name>=floor`` of every dependency and optional extra (``dev``'s test tools aside)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [requirement for extra, requirements in project["optional-dependencies"].items() if extra != "dev"
              for requirement in requirements]
    floors = {}
    for requirement in project["dependencies"] + extras:
        name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)(;.*)?", requirement).groups()[:2]
        floors[name.lower()] = floor
    return floors


def pinned_floors() -> dict[str, str]:
    lines = (ROOT / ".ci" / "floors.txt").read_text().splitlines()
    pins = [re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9.]*)", line) for line in lines]
    return {pin.group(1).lower(): pin.group(2) for pin in pins if pin}


def test_every_declared_floor_is_the_version_the_floor_suite_installs():
    declared = declared_floors()
    assert pinned_floors() == {name: floor for name, floor in declared.items() if name not in UNTESTED_FLOORS}

