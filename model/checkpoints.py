"""Safety checks on a local checkpoint directory, made before transformers reads any of it.

docs/design.md#I7: only safetensors weights load and remote code is never trusted. transformers
enforces both when asked (``use_safetensors=True``, ``trust_remote_code=False``); checking the
directory first gives a clear refusal that names the reason, and guarantees that no pickle file
is ever opened. Torch-free, so the CLI may use it to validate a configured model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from model.engine import TINY_MAX_CONTEXT, TINY_MODELS
from model.errors import ModelLoadError

__all__ = ["PICKLE_SUFFIXES", "check_local_checkpoint", "max_context_of"]

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


def max_context_of(model: str) -> int | None:
    """Tokens the language model of ``model`` attends to (prompt, image and generated), read
    from its ``config.json`` without loading anything or reaching the network: a tiny model's
    from its recipe, a local checkpoint's from its folder, a hub id's from the Hugging Face
    cache. None: this machine has no config of it (a hosted name such as ``gpt-4o-mini`` is
    never looked up), or one without the number."""
    if model in TINY_MODELS:
        return TINY_MAX_CONTEXT
    path = Path(model).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            found = try_to_load_from_cache(model, "config.json")
        except ValueError:  # not a hub id at all (huggingface_hub's HFValidationError)
            return None
        if not isinstance(found, str):
            return None
        config_file = Path(found)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    text_config = config.get("text_config")
    found_in = text_config if isinstance(text_config, dict) else config
    limit = found_in.get("max_position_embeddings")
    return limit if isinstance(limit, int) and limit > 0 else None
