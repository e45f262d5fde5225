"""The exit-code and item-error-code tables of docs/errors.md are the code's, in both directions.

The code is the one source: ``jobs.errors.ExitCode`` (every status the CLI can exit with) and
``jobs.errors.ItemErrorCode`` (every code ``items.error_code`` can hold). Codes are read from
the code at test time, so a code added there without a row in docs/errors.md (or a row left
behind after a code is removed) fails here. Every code another package puts on a failed item
(storage's error classes, model's input errors) must be an ``ItemErrorCode``.
"""

from __future__ import annotations

import re
from pathlib import Path

from jobs.errors import RETRYABLE_ERROR_CODES, ExitCode, ItemErrorCode
from model.errors import INPUT_ERROR_CODES
from storage.errors import StorageError

ROOT = Path(__file__).resolve().parents[2]
ERRORS_PAGE = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
EXIT_CODES = "\n## Exit codes\n"
ITEM_CODES = "\n## Item error codes\n"


def _table_after(marker: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule skipped) of the first table after ``marker``."""
    lines = ERRORS_PAGE[ERRORS_PAGE.index(marker) :].strip("\n").splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))  # "\|" is a pipe in a cell
        rows.append([cell.strip() for cell in cells])
    return rows


def test_exit_code_table_matches_the_code_both_ways() -> None:
    documented = {int(row[0]) for row in _table_after(EXIT_CODES)}
    assert documented == {int(code) for code in ExitCode}


def test_every_exit_code_has_a_meaning_in_the_docs() -> None:
    for row in _table_after(EXIT_CODES):
        assert row[1], row


def test_item_error_code_table_matches_the_code_both_ways() -> None:
    rows = _table_after(ITEM_CODES)
    documented = set()
    for row in rows:
        match = re.fullmatch(r"`([a-z_]+)`", row[0])
        assert match and row[1], row
        documented.add(match.group(1))
    assert documented == {code.value for code in ItemErrorCode}


def test_the_retry_column_is_the_codes_retry_requeues() -> None:
    """``retry`` re-queues by default the failures marked ``yes``, and only those."""
    marked = {}
    for row in _table_after(ITEM_CODES):
        assert row[2] in ("yes", "no"), row
        marked[row[0].strip("`")] = row[2] == "yes"
    assert {code for code, yes in marked.items() if yes} == set(RETRYABLE_ERROR_CODES)


def _subclasses(cls: type[StorageError]) -> set[type[StorageError]]:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= _subclasses(sub)
    return found


def test_every_code_a_failed_item_can_get_is_an_item_error_code() -> None:
    storage_codes = {cls.code for cls in _subclasses(StorageError)}
    known = {code.value for code in ItemErrorCode}
    assert storage_codes <= known, storage_codes - known
    assert set(INPUT_ERROR_CODES) <= known, set(INPUT_ERROR_CODES) - known


def test_every_item_error_code_has_words_for_the_review_page() -> None:
    from jobs.errors import ITEM_ERROR_WORDS, error_words

    assert set(ITEM_ERROR_WORDS) == set(ItemErrorCode)
    for code, words in ITEM_ERROR_WORDS.items():
        assert words.endswith(".") and words[0].isupper() and "\n" not in words, code
    assert error_words("a_newer_code") == "a_newer_code" and error_words(None) is None
