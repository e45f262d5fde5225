"""The CLI imports ``model``'s interfaces; they must not drag in torch or transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_light_modules_do_not_import_torch_or_transformers() -> None:
    code = (
        "import sys\n"
        "import model, model.engine, model.errors, model.images, model.fake, model.checkpoints\n"
        "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == ""


def test_heavy_module_does_import_torch() -> None:
    # Guards the test above against passing because the check itself is broken.
    code = "import sys, model.transformers_engine\nprint('torch' in sys.modules)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "True"
