import os

import pytest

# Tests never reach a model hub; the tiny checkpoints are built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.s3_server", "tests.services"]


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist registers this marker itself; registered here too so that an environment
    # installed before pytest-xdist joined the test extras still collects under --strict-markers.
    config.addinivalue_line(
        "markers", "xdist_group(name): run these tests on one xdist process, one at a time"
    )
