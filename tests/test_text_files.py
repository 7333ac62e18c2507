"""Text the project writes is UTF-8 (results.json, table.yaml, summaries), so every read and write of it
names that encoding: Path.read_text/write_text without one use the locale's, and under a non-UTF-8
locale reproduce.py's table.yaml (with "−" and "±") failed to write, and a folder written on one
machine could read differently on another. This machine has no such locale to run it under, so the
rule is checked in the source."""
import ast

from tests.helpers import ROOT

SOURCES = sorted([*(ROOT / "attn_zoo").rglob("*.py"), *(ROOT / "analysis").glob("*.py"), ROOT / "run.py"])


def _calls_without_encoding(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("read_text", "write_text")
                and not any(keyword.arg == "encoding" for keyword in node.keywords)):
            yield f"{path.relative_to(ROOT)}:{node.lineno}"


def test_every_text_read_and_write_names_its_encoding():
    found = [call for path in SOURCES for call in _calls_without_encoding(path)]
    assert not found, f"read_text/write_text without encoding='utf-8': {', '.join(found)}"
