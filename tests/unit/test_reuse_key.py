"""What an item's reuse key covers (jobs.submit.reuse_key): everything that changes its result
but the model, and nothing that does not."""

from __future__ import annotations

from typing import Any

from jobs.submit.reuse_key import job_basis, reuse_key
from jobs.submit.sources import INPUT_ERROR, MORE_IMAGES, NO_INPUT

PARAMS = {"prompt": "Describe.", "max_new_tokens": 32, "budget_chosen": False, "batch_size": 8}


def _key(params: dict[str, Any] | None = None, kind: str = "caption", **given: Any) -> str | None:
    item: dict[str, Any] = {
        "prompt": None,
        "request": None,
        "input_uri": "file:///blobs/aa",
        "input_sha256": "a" * 64,
        **given,
    }
    return reuse_key(job_basis(kind, params if params is not None else PARAMS), **item)


def test_equal_items_have_equal_keys_and_what_only_runs_the_job_is_left_out() -> None:
    key = _key()
    assert key is not None and len(key) == 64
    assert _key() == key
    how = {**PARAMS, "batch_size": 64, "fingerprint": "f" * 64, "reuse": True}
    assert _key(how) == key


def test_every_part_of_what_is_asked_changes_the_key() -> None:
    key = _key()
    changed = [
        _key(kind="extract"),
        _key({**PARAMS, "prompt": "Name the colour."}),
        _key({**PARAMS, "max_new_tokens": 33}),
        _key({**PARAMS, "budget_chosen": True}),  # the engine may then shrink the budget
        _key({**PARAMS, "questions": ["What?"]}),
        _key(prompt="An item's own prompt."),
        _key(input_sha256="b" * 64),
        _key(request={"max_tokens": 5}),
        _key(request={"sampling": {"temperature": 0.7, "seed": 1}}),
        _key(request={"sampling": {"stop": ["."]}}),
        _key(other_sha256s=["c" * 64]),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


def test_several_images_count_by_their_bytes_in_order_not_their_uris() -> None:
    two = _key(other_sha256s=["c" * 64], request={MORE_IMAGES: ["file:///blobs/cc"]})
    assert two == _key(other_sha256s=["c" * 64], request={MORE_IMAGES: ["s3://b/elsewhere"]})
    assert two != _key(other_sha256s=["d" * 64], request={MORE_IMAGES: ["file:///blobs/cc"]})


def test_a_seeded_draw_is_reusable_and_an_unseeded_one_is_not() -> None:
    seeded = _key(request={"sampling": {"temperature": 0.7, "seed": 1}})
    assert seeded is not None
    assert seeded != _key(request={"sampling": {"temperature": 0.7, "seed": 2}})
    assert _key(request={"sampling": {"temperature": 0.7}}) is None
    assert _key(request={"sampling": {"temperature": 1.0, "top_p": 0.9}}) is None


def test_no_key_where_the_bytes_are_not_known_at_submit() -> None:
    # An input read in place (s3://, https://): stored nowhere, hashed never.
    assert _key(input_uri="s3://bucket/a.jpg", input_sha256=None) is None
    assert _key(other_sha256s=[None]) is None
    # A request of text alone has no input at all: its key is its text.
    text_only = _key(input_uri=NO_INPUT, input_sha256=None, request={"messages": ["hi"]})
    assert text_only is not None
    assert text_only != _key(input_uri=NO_INPUT, input_sha256=None, request={"messages": ["ho"]})


def test_a_refusal_recorded_in_the_request_is_not_part_of_the_key() -> None:
    refused = {INPUT_ERROR: {"code": "x", "message": "y"}}
    assert _key(request=refused) == _key()
