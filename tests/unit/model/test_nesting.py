"""model.nesting: depth measured without recursion, and refused at the limit, never past it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from model.nesting import NestingError, check_nesting, loads_bounded, nesting_depth


def _nested(levels: int) -> Any:
    value: Any = 1
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("levels", [0, 1, 2, 7, 64])
def test_depth_counts_every_list_and_object(levels: int) -> None:
    assert nesting_depth(_nested(levels)) == levels


def test_the_limit_is_allowed_one_more_is_refused() -> None:
    check_nesting(_nested(10), 10)
    assert loads_bounded(json.dumps(_nested(10)), 10) == _nested(10)
    with pytest.raises(NestingError, match="deeper than 10 levels"):
        loads_bounded(json.dumps(_nested(11)), 10)


def test_json_too_deep_for_the_parser_is_a_nesting_error() -> None:
    with pytest.raises(NestingError):
        loads_bounded("[" * 100_000 + "]" * 100_000, 64)
    with pytest.raises(json.JSONDecodeError):  # not JSON stays a decoding error
        loads_bounded("[1,", 64)


def test_a_value_far_deeper_than_the_stack_is_measured_without_recursion() -> None:
    deep: list[Any] = []
    for _ in range(200_000):
        deep = [deep]
    assert nesting_depth(deep, stop_above=5) == 6
    assert nesting_depth(deep) == 200_001
