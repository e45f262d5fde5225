import os
from typing import Any

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


@pytest.fixture
def render_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts PDFium page renders, one entry per page rendered (a spy: the real render runs)."""
    import pypdfium2 as pdfium

    calls: list[int] = []
    real = pdfium.PdfPage.render

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pdfium.PdfPage, "render", counting)
    return calls
