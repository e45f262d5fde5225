"""How ``submit batch`` reads its file. Apart from ``jobs.submit.openai_reader`` so that the
command's ``--input-format`` option (``jobs.kinds.commands``) names it without loading the
reader."""

from __future__ import annotations

from enum import StrEnum


class BatchFormat(StrEnum):
    """How ``submit batch`` reads its file: detected from the first line, or named."""

    auto = "auto"
    openai = "openai"  # OpenAI-Batch JSONL
    manifest = "manifest"  # our own manifest, each line a chat request (jobs/kinds/chat.py)
