"""Text the project writes is UTF-8 (results.json, table.yaml, summaries), so every read and write of it
names that encoding: Path.read_text/write_text without one use the locale's, and under a non-UTF-8
locale reproduce.py's table.yaml (with "−" and "±") failed to write, and a folder written on one
machine could read differently on another. This machine has no such locale to run it under, so the
rule is checked in the source."""
import ast

from tests.helpers import ROOT

MODULES_WITH_OPEN = {"os", "tarfile", "zipfile", "Image"}  # byte-level or archive opens, not text files
SOURCES = sorted([*(ROOT / "attn_zoo").rglob("*.py"), *(ROOT / "analysis").glob("*.py"), ROOT / "run.py"])


def _binary_mode(call: ast.Call) -> bool:
    modes = [*call.args[:1], *(keyword.value for keyword in call.keywords if keyword.arg == "mode")]
    return any(isinstance(mode, ast.Constant) and "b" in str(mode.value) for mode in modes)


def _calls_without_encoding(path):
    """``Path.read_text``/``write_text`` and ``Path.open`` in text mode that name no encoding."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and (node.func.attr in ("read_text", "write_text") or (node.func.attr == "open" and not _binary_mode(node)))
                and not (isinstance(node.func.value, ast.Name) and node.func.value.id in MODULES_WITH_OPEN)
                and not any(keyword.arg == "encoding" for keyword in node.keywords)):
            yield f"{path.relative_to(ROOT)}:{node.lineno}"


def test_every_text_read_and_write_names_its_encoding():
    found = [call for path in SOURCES for call in _calls_without_encoding(path)]
    assert not found, f"text read or write without encoding='utf-8': {', '.join(found)}"
