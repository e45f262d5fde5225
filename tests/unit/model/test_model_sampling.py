"""Per-request sampling and stop strings on the real transformers engine (tiny random
checkpoints): greedy stays the default, a seeded request gives the same text alone or beside any
neighbours, stop strings end a row's text, and sampling keeps to a JSON grammar."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from model.engine import ANY_JSON_OBJECT, GREEDY, GenerationRequest, Sampling, cut_at_stop
from model.transformers_engine import TransformersEngine

IMAGE = Image.new("RGB", (40, 30), (200, 30, 30))
PROMPT = "describe the product"


def _one(engine: TransformersEngine, sampling: Sampling = GREEDY, tokens: int = 16) -> str:
    (result,) = engine.generate([GenerationRequest(IMAGE, PROMPT, sampling)], max_new_tokens=tokens)
    return result.text


def _neighbours() -> list[GenerationRequest]:
    return [
        GenerationRequest(Image.new("RGB", (64, 20), (0, 90, 0)), "a much longer prompt " * 3),
        GenerationRequest(IMAGE, "another", Sampling(temperature=0.7, top_p=0.9, seed=3)),
        GenerationRequest(Image.new("RGB", (20, 20)), "greedy neighbour"),
    ]


def test_greedy_is_the_default_and_sampling_changes_the_text(
    tiny_engine: TransformersEngine,
) -> None:
    greedy = _one(tiny_engine)
    assert greedy == _one(tiny_engine, Sampling(temperature=0, top_p=0.5, seed=1))
    sampled = {_one(tiny_engine, Sampling(temperature=1.5, seed=seed)) for seed in range(4)}
    assert sampled - {greedy}, "sampling at temperature 1.5 never left the greedy text"
    assert len(sampled) > 1, "different seeds gave one text"


def test_a_seeded_request_is_reproducible_whatever_shares_its_batch(
    tiny_engine: TransformersEngine,
) -> None:
    seeded = Sampling(temperature=1.0, top_p=0.95, seed=1234)
    alone = tiny_engine.generate([GenerationRequest(IMAGE, PROMPT, seeded)], max_new_tokens=16)
    again = tiny_engine.generate([GenerationRequest(IMAGE, PROMPT, seeded)], max_new_tokens=16)
    assert alone == again
    for position in range(4):
        batch = _neighbours()
        batch.insert(position, GenerationRequest(IMAGE, PROMPT, seeded))
        beside = tiny_engine.generate(batch, max_new_tokens=16)
        assert beside[position].text == alone[0].text
        assert beside[position].tokens_out == alone[0].tokens_out
    # A greedy row beside sampled ones is the greedy text alone.
    mixed = tiny_engine.generate(
        [GenerationRequest(IMAGE, PROMPT, seeded), GenerationRequest(IMAGE, PROMPT)],
        max_new_tokens=16,
    )
    assert mixed[1].text == _one(tiny_engine)


def test_a_stop_string_ends_only_its_own_row(tiny_engine: TransformersEngine) -> None:
    (full,) = tiny_engine.generate([GenerationRequest(IMAGE, PROMPT)], max_new_tokens=24)
    assert len(full.text) > 8, full.text
    stop = full.text[4:7]
    expected, found = cut_at_stop(full.text, [stop])
    assert found
    stopped, free = tiny_engine.generate(
        [
            GenerationRequest(IMAGE, PROMPT, Sampling(stop=("never in it", stop))),
            GenerationRequest(IMAGE, PROMPT),
        ],
        max_new_tokens=24,
    )
    assert stopped.text == expected.strip()
    assert stop not in stopped.text
    assert stopped.finished
    assert stopped.tokens_out < full.tokens_out
    assert free == full


def test_sampling_keeps_to_the_json_grammar(llava_engine: TransformersEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}, "n": {"type": "integer"}},
        "required": ["colour", "n"],
    }
    requests = [
        GenerationRequest(IMAGE, PROMPT, Sampling(temperature=2.0, seed=seed)) for seed in range(3)
    ]
    for result in llava_engine.generate(requests, max_new_tokens=40, json_schema=schema):
        if result.finished:
            value = json.loads(result.text)
            assert value["colour"] in ("red", "green", "blue")


def test_any_json_object_is_constrained_to_an_object(tiny_engine: TransformersEngine) -> None:
    """OpenAI's json_object: the text is a JSON object, or (cut short) the start of one. The
    random model rarely closes a string; sampled at a high temperature, some rows do."""
    requests = [
        GenerationRequest(IMAGE, PROMPT, Sampling(temperature=2.0, seed=seed)) for seed in range(8)
    ]
    results = tiny_engine.generate(requests, max_new_tokens=48, json_schema=ANY_JSON_OBJECT)
    finished = [r for r in results if r.finished]
    assert finished, [r.text for r in results]
    for result in finished:
        assert isinstance(json.loads(result.text), dict), result.text
    for result in results:
        assert result.text.startswith("{"), result.text
    # Unconstrained, the same requests never write an object.
    free = tiny_engine.generate(requests, max_new_tokens=48)
    assert not any(r.text.startswith("{") for r in free)


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": -0.1},
        {"temperature": 2.5},
        {"top_p": 0},
        {"top_p": 1.5},
        {"seed": 2**64},
        {"stop": ("",)},
    ],
)
def test_sampling_out_of_range_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Sampling(**fields)  # type: ignore[arg-type]
