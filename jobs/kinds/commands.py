"""Every kind's command line, declared once: its command word, what each of its commands says it
does, its input and its own options (``jobs.kinds.options``), by kind name in ``KINDS``' order.

Kept apart from the kinds' modules: ``jobs.cli.kind_commands`` builds ``submit <kind>``, ``run
<kind>`` and ``schedule add <kind>`` from ``COMMANDS`` alone, so building the app (``--help``, or
any command) imports no kind's parameters (pydantic) and no model code; the kind itself
(``jobs.kinds.registry``) is imported when a command runs. A kind in ``KINDS`` has its entry here
(tests/integration/jobs/test_kinds.py).
"""

from __future__ import annotations

from typing import Any

from jobs.kinds.options import REQUIRED, KindCommands, Option
from jobs.kinds.templates import DEFAULT_TEMPLATE, TEMPLATES
from jobs.submit.batch_format import BatchFormat

# extract's defaults, which its parameters (jobs.kinds.extract) take too.
DEFAULT_PAGES = "all"
DEFAULT_DPI = 144


def _read_schema(path: str) -> dict[str, Any]:
    """The ``--schema`` file, parsed (jsonschema loads here: submitting needs it, ``--help``
    does not)."""
    from jobs.extraction import read_schema_file

    return read_schema_file(path)


CAPTION = KindCommands(
    word="caption",
    does="Caption images",
    submit="Caption images: files, directories, s3://bucket/prefix or a .jsonl manifest.",
    schedule="Caption the new images under SOURCE at every due time.",
    options=(
        Option(
            "prompt",
            str | None,
            "Instruction for every item (default: a one-sentence caption).",
        ),
    ),
)

EXTRACT = KindCommands(
    word="extract",
    does="Extract schema-valid JSON",
    submit="Extract schema-valid JSON from PDFs and images (one merged result per document).",
    schedule="Extract schema-valid JSON from the new PDFs and images under SOURCE at every "
    "due time.",
    options=(
        Option(
            "schema",
            str,
            "JSON Schema file the output must validate against.",
            default=REQUIRED,
            read=_read_schema,
        ),
        Option(
            "instructions",
            str | None,
            "Extra instructions for the model.",
            flags=("--prompt",),
        ),
        Option(
            "pages", str, 'PDF pages: "all", "first", or like "1-3" / "1,3,5-7".', DEFAULT_PAGES
        ),
        Option("dpi", int, "PDF rendering resolution.", DEFAULT_DPI),
    ),
)

ASK = KindCommands(
    word="ask",
    does="Ask questions about images",
    submit="Ask questions about images: one answer per question, or a multi-turn conversation.",
    schedule="Ask questions about the new images under SOURCE at every due time.",
    options=(
        Option(
            "questions",
            list[str] | None,
            "A question for every image (repeat for several); a manifest line's "
            '"questions" replace them for its item.',
            flags=("-q", "--question"),
        ),
        Option(
            "conversation",
            bool,
            "Ask the questions as the turns of one chat: each answer is in the next one's context.",
            default=False,
        ),
    ),
)

CHAT = KindCommands(
    word="batch",
    does="Run an OpenAI-Batch JSONL file (or a chat manifest)",
    submit="Run an OpenAI-Batch JSONL file (or a chat manifest): one item per request; the "
    "file's model is the job's.",
    run="Run an OpenAI-Batch JSONL file (or a chat manifest) here and now: one item per "
    "request; --format openai writes the OpenAI Batch output.",
    input_help="A .jsonl file of chat requests: OpenAI-Batch lines (custom_id, method, url, "
    'body) or our manifest lines ({"input", "messages", …}).',
    one_file=True,
    max_new_tokens_help="Tokens per request that gives no max_tokens of its own.",
    options=(
        Option(
            "input_format",
            BatchFormat,
            "The file's format; auto: detected from its first line.",
            default=BatchFormat.auto,
            flags=("--input-format", "--format"),
        ),
    ),
)

LOCATE = KindCommands(
    word="locate",
    does="Locate what expressions describe in images",
    submit="Locate what expressions describe in images: a box in the image's pixels for "
    "each expression.",
    schedule="Locate the expressions in the new images under SOURCE at every due time.",
    options=(
        Option(
            "expressions",
            list[str] | None,
            "What to find, as a phrase (repeat for several); a manifest line's "
            '"expressions" replace them for its item.',
            flags=("-q", "--expression"),
        ),
        Option(
            "template",
            str,
            f"How the checkpoint was taught to ground: {', '.join(TEMPLATES)}.",
            DEFAULT_TEMPLATE,
        ),
    ),
    max_new_tokens_help="Tokens to generate per expression (default: what the box takes).",
)

COMMANDS: dict[str, KindCommands] = {
    "caption": CAPTION,
    "extract": EXTRACT,
    "ask": ASK,
    "chat": CHAT,
    "locate": LOCATE,
}
