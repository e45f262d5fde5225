"""One request about several images, through the real transformers classes (tiny checkpoints):
the checkpoint's own template and processor show them in order, and a checkpoint whose template
shows one image refuses a request of several."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from model.engine import EngineSpec, GenerationRequest
from model.errors import InputError
from model.tiny import _CHAT_TEMPLATE, ensure_tiny_checkpoint
from model.transformers_engine import TransformersEngine, load_engine

_RED = Image.new("RGB", (40, 40), (200, 30, 30))
_BLUE = Image.new("RGB", (40, 40), (30, 30, 200))


def test_two_images_give_two_placeholders_and_generate(
    tiny_engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[list[Any], list[str]]] = []
    processor = tiny_engine._processor  # the checkpoint's own processor, watched
    original = type(processor).__call__

    def watched(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((list(kwargs.get("images") or []), list(kwargs.get("text") or [])))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(processor), "__call__", watched)
    two = GenerationRequest((_RED, _BLUE), "Which is red?")
    one = GenerationRequest(_RED, "Which is red?")
    (both,) = tiny_engine.generate([two], max_new_tokens=5)
    images, texts = seen[-1]
    assert images == [_RED, _BLUE]  # all of them, in order
    assert texts[0].count("<image>") == 2, texts[0]
    assert tiny_engine.max_images is None
    (single,) = tiny_engine.generate([one], max_new_tokens=5)
    assert 0 <= both.tokens_out <= 5
    # The second image's tokens were read: the same prompt, one image's worth more.
    per_image = (
        single.tokens_in
        - tiny_engine.generate([GenerationRequest(None, "Which is red?")], max_new_tokens=5)[
            0
        ].tokens_in
    )
    assert both.tokens_in > single.tokens_in
    assert both.tokens_in - single.tokens_in <= per_image


def test_requests_of_one_and_of_two_images_share_a_batch(tiny_engine: TransformersEngine) -> None:
    two = GenerationRequest((_RED, _BLUE), "Compare them.")
    one = GenerationRequest(_BLUE, "Describe it.")
    alone = [tiny_engine.generate([r], max_new_tokens=4)[0] for r in (two, one)]
    together = tiny_engine.generate([two, one], max_new_tokens=4)
    assert [r.tokens_in for r in together] == [r.tokens_in for r in alone]


# The tiny template, one ``<image>`` per image part, made to show one for any number of them.
_PER_PART = "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}"
_ONCE = "{% if message['content'] | selectattr('type', 'equalto', 'image') | list %}<image>\n"
assert _PER_PART + "{% endfor %}" in _CHAT_TEMPLATE
_ONE_IMAGE_TEMPLATE = _CHAT_TEMPLATE.replace(_PER_PART + "{% endfor %}", _ONCE + "{% endif %}")


def test_a_checkpoint_whose_template_shows_one_image_refuses_several(
    tiny_cache: Path, tmp_path: Path
) -> None:
    local = Path(shutil.copytree(ensure_tiny_checkpoint(tiny_cache, "tiny-llava"), tmp_path / "c"))
    (local / "chat_template.jinja").write_text(_ONE_IMAGE_TEMPLATE)
    engine = load_engine(EngineSpec(model=str(local), device="cpu"))
    assert engine.max_images == 1
    (one,) = engine.generate([GenerationRequest(_RED, "Describe it.")], max_new_tokens=3)
    assert one.tokens_out <= 3
    with pytest.raises(InputError) as refused:
        engine.generate([GenerationRequest((_RED, _BLUE), "Compare.")], max_new_tokens=3)
    assert refused.value.code == "images_not_supported"
    assert "takes 1" in refused.value.message
