"""What a submit holds in memory is bounded in bytes, not in inputs: an OpenAI-Batch file of
inline (``data:``) images many times larger than the budgets is submitted whole while the
process never holds more than the budgets and the few lines in hand.

Measured with tracemalloc's peak, in a process of its own (nothing else of the test run is
counted), through the real submit: checking pass, writing pass, SQLite and a local store."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jobs.errors import RequestError
from jobs.submit.input_store import store_inputs
from jobs.submit.openai_reader import BatchFormat
from jobs.submit.sources import expand_sources
from storage import Blobs
from tests.helpers import image_bytes

ROOT = Path(__file__).resolve().parents[3]
MB = 1024 * 1024

IMAGES = 60
IMAGE_BYTES = 512 * 1024  # 30 MB of images in all, 40 MB of base64 in the file
KEPT_BYTES = 256 * 1024  # what the checking pass may keep for the writing one
IN_FLIGHT_BYTES = 4 * MB  # what uploads may hold at once

SCRIPT = textwrap.dedent(
    """
    import base64, json, os, sys, tracemalloc
    from pathlib import Path

    from jobs.dispatch import CallbackPublisher
    from jobs.submit import input_store, job
    from jobs.submit.job import submit_job
    from jobs.submit.openai_reader import BatchFormat
    from jobs.submit.request import SubmitRequest
    from storage import open_blobs
    from tests.helpers import migrated_session_factory

    work, images, size, kept, in_flight = Path(sys.argv[1]), *map(int, sys.argv[2:])
    job._KEPT_BYTES = kept
    input_store._BYTES_IN_FLIGHT = in_flight
    with open(work / "batch.jsonl", "w") as f:
        for i in range(images):
            url = "data:image/png;base64," + base64.b64encode(os.urandom(size)).decode()
            content = [{"type": "text", "text": "What is it?"},
                       {"type": "image_url", "image_url": {"url": url}}]
            body = {"model": "m", "messages": [{"role": "user", "content": content}]}
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}
            f.write(json.dumps(line) + "\\n")
            del url, content, body, line
    session_factory = migrated_session_factory(f"sqlite:///{work / 'jobs.sqlite3'}")
    blobs = open_blobs(str(work / "blobs"))
    request = SubmitRequest.of(
        "chat", [str(work / "batch.jsonl")], "m", input_format=BatchFormat.openai
    )
    tracemalloc.start()
    result = submit_job(
        request,
        session_factory=session_factory,
        blobs=blobs,
        publisher=CallbackPublisher(lambda _job, _ids: None),
        max_prompt_chars=4000,
    )
    _, peak = tracemalloc.get_traced_memory()
    stored = sum(1 for p in (work / "blobs").rglob("*") if p.is_file())
    print(json.dumps({"items": result.item_count, "stored": stored, "peak": peak}))
    """
)


def test_a_file_of_inline_images_is_submitted_within_the_byte_budgets(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)]
        + [str(n) for n in (IMAGES, IMAGE_BYTES, KEPT_BYTES, IN_FLIGHT_BYTES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["items"] == IMAGES and measured["stored"] == IMAGES
    # The images are 30 MB (the file 40 MB). Held at most: what uploads may hold at once, what
    # the checking pass may keep, and a few lines in hand (a line of base64, its URL string and
    # its image, about 1.7 MB each), with room for the database's and the store's own objects.
    line = IMAGE_BYTES * 4 // 3
    bound = IN_FLIGHT_BYTES + KEPT_BYTES + 3 * (2 * line + IMAGE_BYTES) + 2 * MB
    assert measured["peak"] < bound < IMAGES * IMAGE_BYTES / 2, (measured, bound)


def _batch_line(custom_id: str, image: bytes) -> str:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    content = [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": url}}]
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line) + "\n"


def test_an_inline_image_changed_between_the_two_passes_is_refused(
    blobs: Blobs, tmp_path: Path
) -> None:
    """Inline images are read again when they are stored: bytes other than the ones checked are
    ``source_changed``, as a local file's are, never stored in their place."""
    batch = tmp_path / "batch.jsonl"
    batch.write_text(
        _batch_line("a", image_bytes((8, 8), 1)) + _batch_line("b", image_bytes((8, 8), 2))
    )
    inputs = expand_sources([str(batch)], blobs=blobs, batch_format=BatchFormat.openai)
    assert [spec.inline is not None for spec in inputs] == [True, True]
    stored = store_inputs(inputs, blobs)
    assert [sha for _, sha in stored] == [spec.version for spec in inputs]
    batch.write_text(
        _batch_line("a", image_bytes((8, 8), 1)) + _batch_line("b", image_bytes((8, 8), 3))
    )
    with pytest.raises(RequestError) as refused:
        store_inputs(inputs, blobs)
    assert refused.value.code == "source_changed" and "line 2" in refused.value.message
