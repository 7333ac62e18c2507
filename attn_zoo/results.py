"""results.json: the contract between training and analysis (schema 1, written atomically)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA = 1
FILENAME = "results.json"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file beside ``path`` and rename it, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=2, sort_keys=True, default=str)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def variant_label(attention: str, options: dict[str, Any], defaults: dict[str, Any]) -> str:
    """``se[reduction=8]``: the attention name plus the options that differ from its defaults."""
    changed = {key: value for key, value in sorted(options.items()) if defaults.get(key) != value}
    if not changed:
        return attention
    return f"{attention}[{','.join(f'{key}={value}' for key, value in changed.items())}]"
