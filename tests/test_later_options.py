"""An option a module gains later (``attn_zoo.later_options``): runs made before it read as having used the
value that built the module before, in analysis and on resume, and only where the option is listed."""
import copy
import json
from pathlib import Path

import pytest
import yaml

from analysis.summarize import scan, summarize
from attn_zoo import later_options, run_folder
from attn_zoo.later_options import LATER_OPTIONS, earlier_values, with_later_defaults
from tests.helpers import QUICK, ROOT, as_killed, error_lines, fabricate_run, results, run_entry_point

CBAM = {"name": "cbam", "reduction": 16, "kernel_size": 7, "order": "channel_spatial", "mlp_bias": True,
        "spatial_bn": True, "zero_init_spatial": False}
BEFORE_ZERO_INIT = {key: value for key, value in CBAM.items() if key != "zero_init_spatial"}
NAMED_GROUPS = ("attention", "backbone", "data")


def test_a_missing_option_is_read_as_the_value_that_built_the_module_before():
    config = {"attention": {"name": "cbam", "reduction": 8}, "backbone": {"name": "resnet20"},
              "optim": {"lr": 0.5}, "seed": 1}
    filled = with_later_defaults(config)
    assert filled["attention"] == {"name": "cbam", "reduction": 8, "zero_init_spatial": False}
    assert filled["backbone"] == {"name": "resnet20"}, "an option not listed is never filled"
    assert filled["optim"] == {"lr": 0.5} and filled["seed"] == 1
    assert config["attention"] == {"name": "cbam", "reduction": 8}, "the record itself is not changed"
    recorded = {"attention": {"name": "cbam", "zero_init_spatial": True}}
    assert with_later_defaults(recorded) == recorded, "a recorded value is kept"
    assert with_later_defaults({"attention": {"name": "se"}}) == {"attention": {"name": "se"}}
    assert with_later_defaults(None) is None and with_later_defaults({}) == {}


def test_an_option_every_choice_gained_is_filled_for_each_and_a_choices_own_value_wins(monkeypatch):
    monkeypatch.setattr(later_options, "LATER_OPTIONS", {
        ("attention", "*"): {"scale": 1.0, "shared": "a"}, ("attention", "se"): {"scale": 2.0}})
    assert earlier_values("attention", "eca") == {"scale": 1.0, "shared": "a"}
    assert with_later_defaults({"attention": {"name": "se", "shared": "b"}}) == {
        "attention": {"name": "se", "shared": "b", "scale": 2.0}}


def _yaml_options(group: str, name: str) -> set[str]:
    """The options ``conf/<group>/<name>.yaml`` sets, or those of the yaml that declares ``name: <name>``
    (se_exact.yaml builds the choice se); with ``name`` "*", the group's shared options (config.yaml)."""
    if name == "*":
        return set(yaml.safe_load((ROOT / "conf" / "config.yaml").read_text()).get(group, {}))
    for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
        options = yaml.safe_load(path.read_text()) or {}
        if options.get("name") == name:
            return set(options) - {"name", "defaults"}
    return set()


def test_every_listed_option_is_an_option_of_its_choice():
    for (group, name), options in LATER_OPTIONS.items():
        assert set(options) <= _yaml_options(group, name), (group, name)


def test_no_committed_run_lacks_an_option_that_is_not_listed():
    """The rule, checked against the runs under results/: a choice that gains an option lists it in
    LATER_OPTIONS with the value that builds it as before, or those runs split from new ones."""
    committed = sorted((ROOT / "results").glob("*/*/results.json"))
    unlisted = set()
    for path in committed:
        config = json.loads(path.read_text())["config"]
        for group in NAMED_GROUPS:
            section = config[group]
            known = set(section) | set(earlier_values(group, section["name"]))
            unlisted |= {(group, section["name"], key) for key in
                         (_yaml_options(group, section["name"]) | _yaml_options(group, "*")) - known}
    assert committed and not unlisted, f"options committed runs lack, not in LATER_OPTIONS: {sorted(unlisted)}"


def test_runs_made_before_an_option_average_with_runs_at_the_earlier_value(tmp_path):
    for seed in (0, 1):
        fabricate_run(tmp_path / f"old{seed}", "cbam", seed, 80.0 + seed, options=BEFORE_ZERO_INIT)
        fabricate_run(tmp_path / f"new{seed + 2}", "cbam", seed + 2, 82.0 + seed, options=CBAM)
        fabricate_run(tmp_path / f"zero{seed}", "cbam", seed, 70.0 + seed, variant="cbam[zero_init_spatial=true]",
                      options={**CBAM, "zero_init_spatial": True})
    table = summarize(scan([tmp_path]).runs, baseline=None).set_index("attention")
    assert table["n"].to_dict() == {"cbam": 4, "cbam[zero_init_spatial=true]": 2}
    assert table.loc["cbam", "top1_mean"] == 81.5


def test_config_differences_read_a_listed_option_as_its_earlier_value_and_nothing_else():
    backbone = {"name": "resnet20", "shortcut": "projection", "placement": "standard"}
    current = {"attention": CBAM, "backbone": backbone}
    recorded = {"attention": BEFORE_ZERO_INIT, "backbone": {"name": "resnet20", "shortcut": "projection"}}
    assert run_folder.config_differences(recorded, current) == ["backbone.placement"], "not listed: a difference"
    recorded["backbone"] = backbone
    assert run_folder.config_differences(recorded, current) == []
    changed = copy.deepcopy(current)
    changed["attention"]["zero_init_spatial"] = True
    assert run_folder.config_differences(recorded, changed) == ["attention.zero_init_spatial"]


@pytest.fixture(scope="module")
def cbam_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cbam") / "run"
    made = run_entry_point(*QUICK, "attention=cbam", f"hydra.run.dir={out}", cwd=out.parent)
    assert made.returncode == 0, made.stderr[-2000:]
    return out


def test_a_run_made_before_an_option_resumes_at_its_earlier_value_and_not_at_another(cbam_run):
    as_killed(cbam_run)
    record = results(cbam_run)
    del record["config"]["attention"]["zero_init_spatial"]
    (cbam_run / "results.json").write_text(json.dumps(record))
    overrides = (*QUICK, "attention=cbam", f"hydra.run.dir={cbam_run}")
    other = run_entry_point(*overrides, "attention.zero_init_spatial=true", cwd=cbam_run.parent)
    assert other.returncode == 2 and "(differs in attention.zero_init_spatial)" in error_lines(other)[0], \
        other.stderr[-2000:]
    again = run_entry_point(*overrides, cwd=cbam_run.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    assert results(cbam_run)["status"] == "completed" and results(cbam_run)["resumed_from"]
