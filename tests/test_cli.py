"""``python -m attn_zoo list``: every registered name with its description and parameters at C=256."""
import subprocess
import sys
from pathlib import Path

import pytest

import attn_zoo
from attn_zoo.__main__ import main
from attn_zoo.profile import count_params
from attn_zoo.registry import ATTENTION

ROOT = Path(__file__).resolve().parents[1]


def listing_rows(text: str) -> dict[str, str]:
    return {line.split()[0]: line for line in text.splitlines()[1:]}


def test_list_shows_each_name_description_and_parameters_at_256(capsys):
    assert main(["list"]) == 0
    rows = listing_rows(capsys.readouterr().out)
    assert sorted(rows) == attn_zoo.list_attention()
    for name, line in rows.items():
        params = count_params(attn_zoo.create_attention(name, 256))
        assert line.split()[1] == f"{params:,}"
        assert line.endswith(ATTENTION.get(name).description)
    assert rows["se"].split()[1] == f"{2 * 256 * 16 + 16 + 256:,}" and rows["none"].split()[1] == "0"


def test_list_channels_option(capsys):
    main(["list", "--channels", "64"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[1] == "params@C=64"
    assert listing_rows(out)["ese"].split()[1] == f"{64 * 64 + 64:,}"


def test_module_entry_point_runs_and_needs_a_command():
    listed = subprocess.run([sys.executable, "-m", "attn_zoo", "list"], capture_output=True, text=True, cwd=ROOT)
    assert listed.returncode == 0 and "cbam" in listed.stdout
    bare = subprocess.run([sys.executable, "-m", "attn_zoo"], capture_output=True, text=True, cwd=ROOT)
    assert bare.returncode == 2 and "list" in bare.stderr


def test_unknown_command_is_rejected():
    with pytest.raises(SystemExit) as exit_info:
        main(["lst"])
    assert exit_info.value.code == 2
