"""Reduced-scale JPEG decoding: smaller than the original, never smaller than the model needs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from model.engine import EngineSpec
from model.images import decode_image


def _encoded(size: tuple[int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 50).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "min_side"),
    [((1600, 1200), 336), ((4000, 3000), 336), ((1200, 900), 1008), ((640, 480), 28)],
)
def test_big_jpegs_decode_smaller_but_never_below_min_side(
    size: tuple[int, int], min_side: int
) -> None:
    image = decode_image(_encoded(size, "JPEG"), min_side=min_side)
    assert image.mode == "RGB"
    assert min(image.size) >= min(min_side, min(size))
    if min(size) >= 2 * min_side:
        assert image.size[0] < size[0]  # decoded at a reduced scale
    assert image.size[0] / image.size[1] == pytest.approx(size[0] / size[1], rel=0.02)


def test_other_formats_and_no_hint_decode_at_full_size() -> None:
    assert decode_image(_encoded((1600, 1200), "PNG"), min_side=336).size == (1600, 1200)
    assert decode_image(_encoded((1600, 1200), "JPEG")).size == (1600, 1200)


def test_engines_report_the_side_their_processor_needs(tmp_path: Path) -> None:
    from model.transformers_engine import load_engine

    llava = load_engine(EngineSpec(model="tiny-llava", cache_dir=tmp_path))
    nxt = load_engine(EngineSpec(model="tiny-llava-next", cache_dir=tmp_path))
    assert llava.input_side == 28
    assert nxt.input_side > llava.input_side
