import os

# Tests never reach a model hub; the tiny checkpoints are built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.s3_server", "tests.services"]
