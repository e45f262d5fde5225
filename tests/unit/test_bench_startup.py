"""bench/startup.py's instruction count, read from callgrind's own closing report."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
try:
    import startup
finally:
    sys.path.remove(str(ROOT / "bench"))

REPORT = """==4242== Events    : Ir
==4242== Collected : 1178205364
==4242==
==4242== I   refs:      1,178,205,364
"""


def test_the_count_is_callgrind_s_collected_line() -> None:
    assert startup.collected(REPORT) == 1_178_205_364
    with pytest.raises(SystemExit, match="no count"):
        startup.collected("==4242== I   refs: 12\n")
