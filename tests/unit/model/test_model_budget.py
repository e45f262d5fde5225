"""A budget the system chose (a kind's default) shrinks to what the model's context leaves; a
user's own number that cannot fit is refused, as before."""

from __future__ import annotations

import pytest
from PIL import Image

from model.engine import GenerationRequest
from model.errors import InputError
from model.transformers_engine import TransformersEngine


def test_a_chosen_budget_shrinks_to_fit_the_context(tiny_engine: TransformersEngine) -> None:
    request = GenerationRequest(Image.new("RGB", (40, 30), (9, 80, 200)), "describe")
    too_many = tiny_engine.max_context * 2
    with pytest.raises(InputError) as refused:
        tiny_engine.generate([request], max_new_tokens=too_many)
    assert refused.value.code == "prompt_too_long"
    (result,) = tiny_engine.generate([request], max_new_tokens=too_many, fit_to_context=True)
    room = tiny_engine.max_context - tiny_engine.count_prompt_tokens("describe")
    assert 0 < result.tokens_out <= room
