"""model.patterns: the pattern subset both the decoder and the validator read alike, bounded."""

from __future__ import annotations

import re

import pytest

from model.patterns import PatternError, bound_pattern, build_pattern_example, pattern_max_length
from model.schema import DATE_PATTERN


def _bound(pattern: str, **lengths: int) -> tuple[str, int]:
    return bound_pattern(
        pattern,
        min_length=lengths.get("min_length"),
        max_length=lengths.get("max_length"),
        default_max_length=200,
    )


@pytest.mark.parametrize(
    ("pattern", "bounded", "longest"),
    [
        (r"^[A-Z]{3}$", r"^[A-Z]{3}$", 3),  # already bounded: kept as written
        (r"^\d+$", r"^\d{1,200}$", 200),
        (r"^[A-Z]+-\d*$", r"^[A-Z]{1,99}-\d{0,99}$", 199),  # one bound for every repeat
        (r"^(ab|c)+$", r"^(ab|c){1,100}$", 200),
        (r"^a{3,}x?$", r"^a{3,199}x?$", 200),
        (r"^(?:[a-z]+\.)*[a-z]+$", r"^(?:[a-z]{1,13}\.){0,13}[a-z]{1,13}$", 13 * 14 + 13),
        (r"^(a+){2}?$", r"^(a{1,100}){2}?$", 200),
    ],
)
def test_open_ended_repeats_get_a_bound_that_keeps_the_longest_match_in_range(
    pattern: str, bounded: str, longest: int
) -> None:
    assert _bound(pattern) == (bounded, longest)
    assert pattern_max_length(bounded) == longest
    sample = build_pattern_example(bounded, longest=True)
    assert len(sample) == longest and re.search(pattern, sample) and re.search(bounded, sample)
    assert re.search(pattern, build_pattern_example(bounded))


def test_the_users_max_length_is_the_bound_and_must_cover_the_pattern() -> None:
    assert _bound(r"^\d+$", min_length=1, max_length=10) == (r"^\d{1,10}$", 10)
    assert _bound(r"^[A-Z]{3}$", min_length=3, max_length=3) == (r"^[A-Z]{3}$", 3)
    with pytest.raises(PatternError, match="longer than maxLength"):
        _bound(r"^[A-Z]{3}$", max_length=2)
    with pytest.raises(PatternError, match="shorter than minLength"):
        _bound(r"^\d*$", min_length=1)


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        (r"^(?=a)a$", "lookaround"),
        (r"(?i)abc", "flags"),
        (r"^(a)\1$", "backreferences"),
        (r"\bword", "boundary"),
        (r"^\p{L}+$", "Unicode property"),
        (r"^\S+$", r"\S is not supported"),
        (r"^[^\d]$", "inside [^…]"),
        (r"a^b", "start of the pattern"),
        (r"a$b", "end of the pattern"),
        (r"^a*+$", "repeated"),
        (r"^a{2000}$", "above 1000"),
        (r"^a{", "literal {"),
    ],
)
def test_what_the_decoder_and_validator_would_read_differently_is_refused(
    pattern: str, words: str
) -> None:
    with pytest.raises(PatternError) as info:
        _bound(pattern)
    assert words in str(info.value)


def test_the_date_pattern_is_in_the_subset_and_ten_characters_long() -> None:
    assert _bound(DATE_PATTERN) == (DATE_PATTERN, 10)
    assert re.fullmatch(DATE_PATTERN, build_pattern_example(DATE_PATTERN, longest=True))
