"""The review page's fixtures: a job built through the real submit path whose file names,
custom ids, name, metadata and model outputs carry script, with results recorded through
``jobs.lifecycle``; the ASGI app over it (``client``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from jobs.db import SessionFactory
from jobs.lifecycle import ItemOutcome, claim_items, finalise_jobs, record_results
from jobs.outcome import Outcome
from storage import Blobs
from tests.helpers import ListPublisher, image_bytes, make_settings, queued_ids
from tests.integration.cli import conftest as cli_fixtures
from tests.integration.jobs import conftest as jobs_fixtures
from tests.services import free_port

# Each would set window.__pwned (or open an alert) if the page ever ran it.
SCRIPT = "<script>window.__pwned=1;alert(1)</script>"
IMG = '<img src=x onerror="window.__pwned=1;alert(1)">'
HOSTILE = SCRIPT + IMG
HOSTILE_FILE = "<img src=x onerror=window.__pwned=1>.png"  # no "/" in a file name
BASE = "https://127.0.0.1:8000"  # https: the test client sends Secure cookies only over it

# Both databases, as the jobs tests have them (parametrised: SQLite and PostgreSQL); the CLI's
# environment and runner.
db_url = jobs_fixtures.db_url
session_factory = jobs_fixtures.session_factory
blobs = jobs_fixtures.blobs
cli_env = cli_fixtures.cli_env
run_cli = cli_fixtures.run_cli


@dataclass(frozen=True)
class ReviewJob:
    job_id: str
    item_ids: list[str]  # by seq
    failed: list[str]
    succeeded: list[str]


def build_review_job(sf: SessionFactory, blobs: Blobs, tmp_path: Path, *, n: int = 24) -> ReviewJob:
    """``n`` images (one named like markup) submitted from a manifest that gives every third a
    hostile custom id; then every odd item fails (a hostile message on one) and every even one
    succeeds (hostile output on one)."""
    from jobs.submit.job import submit_job
    from jobs.submit.request import SubmitRequest

    folder = tmp_path / "inputs"
    folder.mkdir()
    lines = []
    for i in range(n):
        name = HOSTILE_FILE if i == 2 else f"img{i:03d}.png"
        (folder / name).write_bytes(image_bytes((40 + i, 30), seed=i))
        entry: dict[str, str] = {"input": name}
        if i % 3 == 0:
            entry["custom_id"] = f"{SCRIPT}-{i}"
        lines.append(json.dumps(entry))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = submit_job(
        SubmitRequest.of(
            kind="caption",
            sources=[str(manifest)],
            model="fake",
            max_new_tokens=8,
            batch_size=100,
            name=f"review {SCRIPT}",
            metadata={"note": HOSTILE},
        ),
        session_factory=sf,
        blobs=blobs,
        publisher=ListPublisher(),
        max_prompt_chars=1000,
    )
    ids = queued_ids(sf, result.job_id)
    claimed = claim_items(sf, ids, worker="w", lease_seconds=60)
    outcomes = []
    for c in claimed:
        i = ids.index(c.id)
        if i % 2:
            code = "image_decode_error" if i % 4 == 1 else "output_truncated"
            message = HOSTILE if i == 1 else "The image could not be decoded."
            outcome = Outcome(error_code=code, error_message=message, tokens_out=0)
        else:
            outcome = Outcome(text=HOSTILE if i == 0 else f"a caption of {i}", tokens_out=3)
        outcomes.append(ItemOutcome(c.id, c.lease_token, outcome))
    record_results(sf, outcomes)
    finalise_jobs(sf, [result.job_id])
    return ReviewJob(result.job_id, ids, ids[1::2], ids[0::2])


@pytest.fixture
def review_job(session_factory: SessionFactory, blobs: Blobs, tmp_path: Path) -> ReviewJob:
    return build_review_job(session_factory, blobs, tmp_path)


@pytest.fixture
def client(session_factory: SessionFactory, blobs: Blobs, tmp_path: Path) -> Iterator[TestClient]:
    from jobs.web.app import create_app

    app = create_app(
        # a broker nobody listens on: retry says the sweeper will dispatch, as the CLI does
        make_settings(home=tmp_path / "home", broker_url=f"redis://127.0.0.1:{free_port()}/0"),
        session_factory,
        blobs,
        reviewer="ada",
    )
    with TestClient(app, base_url=BASE) as test_client:
        test_client.get("/")  # takes its CSRF cookie
        yield test_client


def post(client: TestClient, url: str, **data: str) -> httpx.Response:
    """A POST as the page's own form sends it: its CSRF field, its Origin."""
    form = {"csrf": client.cookies.get("llava_batch_csrf") or "", **data}
    return client.post(url, data=form, headers={"origin": BASE}, follow_redirects=False)


# The boxes build_locate_item records: "the lid" on the left, then one whose expression is
# script (its legend must show it as text).
LOCATE_BOXES = [
    {"expression": "the lid", "box": [0.1, 0.2, 0.4, 0.8]},
    {"expression": HOSTILE, "box": [0.5, 0.1, 0.9, 0.5]},
]


def build_locate_item(sf: SessionFactory, blobs: Blobs, tmp_path: Path) -> str:
    """A ``locate`` job of one flat grey 400 x 200 image, submitted through the real path, whose
    item succeeded with ``LOCATE_BOXES``; returns the item's id."""
    from PIL import Image

    from jobs.submit.job import submit_job
    from jobs.submit.request import SubmitRequest

    folder = tmp_path / "shelf"
    folder.mkdir()
    Image.new("RGB", (400, 200), (128, 128, 128)).save(folder / "shelf.png")
    submitted = submit_job(
        SubmitRequest.of(
            "locate",
            [str(folder)],
            "fake",
            expressions=[box["expression"] for box in LOCATE_BOXES],
            batch_size=8,
        ),
        session_factory=sf,
        blobs=blobs,
        publisher=ListPublisher(),
        max_prompt_chars=1000,
    )
    (item_id,) = queued_ids(sf, submitted.job_id)
    (claimed,) = claim_items(sf, [item_id], worker="w", lease_seconds=60)
    record_results(sf, [ItemOutcome(item_id, claimed.lease_token, Outcome(json=LOCATE_BOXES))])
    return item_id
