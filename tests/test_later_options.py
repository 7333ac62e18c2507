"""An option a module gains later (``attn_zoo.later_options``): runs made before it read as having used its
default, in analysis and on resume, and only there where the option really is missing."""
import copy
import json

from analysis.summarize import scan, summarize
from attn_zoo import run_folder
from attn_zoo.later_options import choice_defaults, with_later_defaults
from tests.helpers import TWO_EPOCHS, as_killed, error_lines, fabricate_run, results, run_entry_point

CBAM = {"name": "cbam", "reduction": 16, "kernel_size": 7, "order": "channel_spatial", "mlp_bias": True,
        "spatial_bn": True}


def _before(option: str, section: dict = CBAM) -> dict:
    """``section`` as a run made before ``option`` existed recorded it."""
    return {key: value for key, value in section.items() if key != option}


def test_a_missing_option_is_its_yamls_default_and_recorded_values_stay():
    config = {"attention": {"name": "cbam", "reduction": 8}, "backbone": {"name": "resnet20"},
              "optim": {"lr": 0.5}, "seed": 1}
    filled = with_later_defaults(config)
    assert filled["attention"] == {**CBAM, "reduction": 8}
    assert filled["backbone"] == {"name": "resnet20", "shortcut": "projection", "placement": "standard",
                                  "stages": [1, 2, 3], "fused_tail": False}
    assert filled["optim"] == {"lr": 0.5} and filled["seed"] == 1, "sections without a named choice stay"
    assert config["attention"] == {"name": "cbam", "reduction": 8}, "the record itself is not changed"
    filled["backbone"]["stages"].append(4)
    assert choice_defaults("backbone", "resnet20")["stages"] == [1, 2, 3], "defaults are copied, not shared"


def test_unknown_choices_and_interpolated_defaults_are_not_filled():
    assert with_later_defaults({"attention": {"name": "retired_module", "x": 1}}) == {
        "attention": {"name": "retired_module", "x": 1}}
    assert "root" not in with_later_defaults({"data": {"name": "embedded"}})["data"]  # ${oc.env:...}
    assert choice_defaults("attention", "se_exact") == {}, "a yaml whose name is another choice's (se)"
    assert with_later_defaults(None) is None and with_later_defaults({}) == {}


def test_runs_made_before_an_option_average_with_runs_that_record_its_default(tmp_path):
    for seed in (0, 1):
        fabricate_run(tmp_path / f"old{seed}", "cbam", seed, 80.0 + seed, options=_before("spatial_bn"))
        fabricate_run(tmp_path / f"new{seed + 2}", "cbam", seed + 2, 82.0 + seed, options=CBAM)
        fabricate_run(tmp_path / f"conv{seed}", "cbam", seed, 70.0 + seed, variant="cbam[spatial_bn=false]",
                      options={**CBAM, "spatial_bn": False})
    table = summarize(scan([tmp_path]).runs, baseline=None).set_index("attention")
    assert table["n"].to_dict() == {"cbam": 4, "cbam[spatial_bn=false]": 2}
    assert table.loc["cbam", "top1_mean"] == 81.5


def test_config_differences_read_a_missing_option_as_its_default():
    current = {"attention": CBAM, "backbone": {"name": "resnet20", "shortcut": "projection", "placement": "standard",
                                               "stages": [1, 2, 3], "fused_tail": False}}
    recorded = {"attention": _before("spatial_bn"), "backbone": {"name": "resnet20"}}
    assert run_folder.config_differences(recorded, current) == []
    changed = copy.deepcopy(current)
    changed["attention"]["spatial_bn"], changed["backbone"]["placement"] = False, "pre"
    assert run_folder.config_differences(recorded, changed) == ["attention.spatial_bn", "backbone.placement"]


def test_a_run_made_before_an_option_resumes_with_its_default_and_not_with_another_value(two_epoch_copy):
    run_copy = two_epoch_copy
    as_killed(run_copy)
    record = results(run_copy)
    record["config"]["backbone"] = _before("placement", record["config"]["backbone"])
    (run_copy / "results.json").write_text(json.dumps(record))
    other = run_entry_point(*TWO_EPOCHS, "backbone.placement=post", f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert other.returncode == 2 and "(differs in backbone.placement)" in error_lines(other)[0], other.stderr[-2000:]
    again = run_entry_point(*TWO_EPOCHS, f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    assert results(run_copy)["status"] == "completed" and results(run_copy)["resumed_from"]
