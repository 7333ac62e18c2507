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



# namespace packages shared by several distributions (nvidia: the CUDA libraries torch brings, and DALI):
# their modules are named two levels down
NAMESPACES = {"nvidia"}


def _imported_top_level_modules(folders: list[Path]) -> set[str]:
    import ast
    names = set()
    for path in (file for folder in folders for file in folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return {".".join(name.split(".")[:2]) if name.split(".")[0] in NAMESPACES else name.split(".")[0]
            for name in names}


def test_every_distribution_the_code_imports_is_declared():
    """A module the package imports must come from a dependency it declares (or an optional extra):
    one that arrives only as another's dependency (PyYAML through hydra-core) has no floor and can
    go when that one drops it."""
    from importlib.metadata import packages_distributions
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [requirement for extra, requirements in project["optional-dependencies"].items() if extra != "dev"
              for requirement in requirements]
    declared = {re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
                for requirement in project["dependencies"] + extras}
    providers = packages_distributions()
    providers.update({"nvidia.dali": ["nvidia-dali-cuda130"]})  # one namespace among others: by its name
    # triton ships with torch's Linux builds, which the fused kernels need anyway
    imported = _imported_top_level_modules([ROOT / "attn_zoo", ROOT / "analysis"]) - {"attn_zoo", "analysis", "triton"}
    undeclared = {module: providers[module] for module in sorted(imported) if module in providers
                  and not {name.lower().replace("_", "-") for name in providers[module]} & declared}
    assert undeclared == {}
