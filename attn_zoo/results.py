"""results.json: the contract between training and analysis (schema 1, written atomically)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

SCHEMA = 1
FILENAME = "results.json"

# environment variables whose values are secrets: a config that interpolates one must not leak it
SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would redact ordinary text
REDACTED = "<redacted>"


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-named environment variables, longest first."""
    environ = os.environ if environ is None else environ
    values = {
        value for name, value in environ.items()
        if any(part in name.upper() for part in SECRET_NAME_PARTS) and len(value) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def redact(payload: Any, secrets: list[str] | None = None) -> Any:
    """``payload`` with every occurrence of a secret value in its strings replaced by ``<redacted>``."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return payload
    if isinstance(payload, str):
        for secret in secrets:
            payload = payload.replace(secret, REDACTED)
        return payload
    if isinstance(payload, dict):
        return {redact(key, secrets): redact(value, secrets) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [redact(item, secrets) for item in payload]
    return payload


# a checkpoint's key for what the run is, beside the weights: {"config": resolved config, "attention_variant":
# label, "max_epochs_history": pairs, "code_versions": [...], "data_fingerprint", "paired_by_seed"}; here,
# not in attn_zoo.checkpoints, so analysis reads checkpoints without importing the training code
RUN_RECORD = "attn_zoo_run"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once, at import (before training's threads start): os.umask reads it by setting it, and a file
# another thread (wandb's, Lightning's) made while it stood at 0 would be writable by everyone
UMASK = _umask()


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it, so no reader sees half a file.
    Used for results.json and for every output of analysis/."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # UTF-8 whatever the locale: the tables hold ±, Δ and →, which an ASCII or Latin-1 locale cannot write
        with (os.fdopen(handle, "wb") if isinstance(content, bytes) else
              os.fdopen(handle, "w", encoding="utf-8", newline="")) as stream:
            stream.write(content)
        os.chmod(temporary, 0o666 & ~UMASK)  # mkstemp makes 0600; give outputs the usual mode
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# results.json keys a run copies into its wandb summary, which analysis/summarize.py --wandb reads back
WANDB_SUMMARY_KEYS = (
    "status", "attention_variant", "params", "attention_params", "flops", "macs", "top1", "top5", "best_top1",
    "best_top5", "best_epoch", "ema_top1", "ema_top5", "epochs", "wall_time_s", "train_images_per_s",
    "data_fingerprint", "val_images", "max_epochs_history", "finished_at", "hardware", "code_versions", "error",
    "diverged_at_step", "interrupted_by", "paired_by_seed", "world_size",
)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """``write_atomic`` of ``payload`` as JSON, with the values of secret environment variables
    redacted (``redact``)."""
    write_atomic(path, json.dumps(redact(payload), indent=2, sort_keys=True, default=str) + "\n")


def variant_label(attention: str, options: dict[str, Any], defaults: dict[str, Any]) -> str:
    """``se[reduction=8]``: the attention name plus the options that differ from its defaults."""
    changed = {key: value for key, value in sorted(options.items()) if defaults.get(key) != value}
    if not changed:
        return attention
    return f"{attention}[{','.join(f'{key}={value}' for key, value in changed.items())}]"
