"""Safety checks on a local checkpoint directory, made before transformers reads any of it.

docs/design.md#I7: only safetensors weights load and remote code is never trusted. transformers
enforces both when asked (``use_safetensors=True``, ``trust_remote_code=False``); checking the
directory first gives a clear refusal that names the reason, and guarantees that no pickle file
is ever opened. Torch-free, so the CLI may use it to validate a configured model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from model.errors import ModelLoadError

__all__ = ["PICKLE_SUFFIXES", "check_local_checkpoint"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# Files whose `auto_map` entry would make transformers look for custom (remote) code.
_CONFIG_FILES = (
    "config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
)


def check_local_checkpoint(path: Path) -> None:
    """Raise ``ModelLoadError`` if ``path`` has no safetensors weights or asks for custom code."""
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist or is not a directory")
    # Sharded checkpoints have several model-0000N-of-0000M.safetensors files; any will do.
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        reason = f"only pickle weights ({', '.join(pickles[:3])})" if pickles else "no weights"
        raise ModelLoadError(
            f"refusing to load {path}: {reason}; only .safetensors weights are loaded"
        )
    for name in _CONFIG_FILES:
        config_file = path / name
        if not config_file.is_file():
            continue
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"cannot read {config_file}: {first_line}") from exc
        if isinstance(config, dict) and "auto_map" in config:
            raise ModelLoadError(
                f"refusing to load {path}: {name} asks for custom code (auto_map); "
                "remote code is never trusted"
            )
