"""Shared fixtures for the model tests: tiny checkpoints built once per session, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Must be set before huggingface_hub is imported: it reads these once. The root conftest sets
# them too; repeating it keeps this directory runnable on its own.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from model.engine import EngineSpec
from model.transformers_engine import TransformersEngine, load_engine


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide cache directory for tiny checkpoints (never the user's ~/.cache)."""
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="session")
def llava_engine(tiny_cache: Path) -> TransformersEngine:
    return load_engine(EngineSpec(model="tiny-llava", cache_dir=tiny_cache, device="cpu"))


@pytest.fixture(scope="session")
def llava_next_engine(tiny_cache: Path) -> TransformersEngine:
    return load_engine(EngineSpec(model="tiny-llava-next", cache_dir=tiny_cache, device="cpu"))


@pytest.fixture(scope="session", params=["tiny-llava", "tiny-llava-next"])
def tiny_engine(
    request: pytest.FixtureRequest,
    llava_engine: TransformersEngine,
    llava_next_engine: TransformersEngine,
) -> TransformersEngine:
    """Each tiny flavour in turn."""
    return llava_engine if request.param == "tiny-llava" else llava_next_engine
