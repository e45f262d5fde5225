"""LLAVA_BATCH_INPUT_PREFIXES, on SQLite and PostgreSQL with moto's S3 server: what a user's input
may name. Unset, any bucket the credentials reach, as before. Set, a source outside it refuses
the request before it is listed; an input a file names outside it fails alone
(``input_not_allowed``), never listed or read; the workers hold every item to the list whatever
the submitting side checked, and still read what a submit stored in the deployment's own store.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from jobs.db import Item, Job, Schedule, SessionFactory, utcnow
from jobs.dispatch import CallbackPublisher
from jobs.errors import RequestError
from jobs.schedules import add_schedule, fire_due_schedules
from jobs.submit.job import submit_job
from jobs.submit.openai_reader import BatchFormat
from jobs.submit.request import SubmitRequest, SubmitResult
from jobs.submit.sources import read_input_error
from model.fake import FakeEngine
from storage import Blobs, open_blobs
from tests.helpers import image_bytes, make_resources, write_images
from workers.local import run_job_locally

NO_SUCH_BUCKET = "no-such-bucket-llava-test"


@pytest.fixture
def s3_blobs(moto_server: str, s3_bucket: str) -> Blobs:
    """The deployment's own store, in the same bucket as the users' inputs, outside the list."""
    return open_blobs(f"s3://{s3_bucket}/store")


@pytest.fixture
def bucket(s3_bucket: str, s3_client: Any) -> str:
    for key in ("in/a.png", "in/sub/b.png", "other/c.png", "inbox/d.png"):
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=image_bytes((16, 16), seed=len(key)))
    return s3_bucket


def _request(sources: list[str], allowed: tuple[str, ...] = (), **kw: Any) -> SubmitRequest:
    return SubmitRequest.of("caption", sources, "m", batch_size=8, input_prefixes=allowed, **kw)


def _submit(sf: SessionFactory, blobs: Blobs, request: SubmitRequest) -> SubmitResult:
    return submit_job(
        request,
        session_factory=sf,
        blobs=blobs,
        publisher=CallbackPublisher(lambda _j, _i: None),
        max_prompt_chars=4000,
    )


def _run(sf: SessionFactory, blobs: Blobs, request: SubmitRequest, allowed: tuple[str, ...]) -> str:
    """Submits ``request`` and works it through with workers whose list is ``allowed``."""
    res = make_resources(sf, blobs, FakeEngine(), input_prefixes=allowed)
    return run_job_locally(request, res, max_prompt_chars=4000).job_id


def _outcomes(sf: SessionFactory, job_id: str) -> dict[str, tuple[str, str | None]]:
    with sf() as session:
        items = session.scalars(select(Item).where(Item.job_id == job_id))
        return {i.source: (i.status, i.error_code) for i in items}


def _jobs(sf: SessionFactory) -> int:
    with sf() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_unset_any_bucket_the_credentials_reach_can_be_named(
    session_factory: SessionFactory, s3_blobs: Blobs, bucket: str
) -> None:
    job_id = _run(session_factory, s3_blobs, _request([f"s3://{bucket}/"]), ())
    outcomes = _outcomes(session_factory, job_id)
    assert len(outcomes) == 4
    assert set(outcomes.values()) == {("succeeded", None)}


@pytest.mark.parametrize(
    "source",
    ["s3://{b}/other/", "s3://{b}/inbox/", "s3://{b}/in", "S3://{b}/other/c.png", "s3://{nb}/in/"],
)
def test_a_source_outside_the_list_is_refused_before_it_is_listed(
    session_factory: SessionFactory, s3_blobs: Blobs, bucket: str, source: str
) -> None:
    allowed = (f"s3://{bucket}/in",)  # a prefix names a folder: in/, not inbox/
    named = source.format(b=bucket, nb=NO_SUCH_BUCKET)
    with pytest.raises(RequestError) as refused:
        _submit(session_factory, s3_blobs, _request([f"s3://{bucket}/in/", named], allowed))
    # A bucket that does not exist is not_allowed, not not_found: nothing was asked of S3.
    assert refused.value.code == "input_not_allowed", refused.value.message
    assert named[:40] in refused.value.message and f"s3://{bucket}/in/" in refused.value.message
    assert _jobs(session_factory) == 0


def test_inputs_a_manifest_names_outside_the_list_fail_alone_and_the_store_stays_readable(
    session_factory: SessionFactory, s3_blobs: Blobs, bucket: str, tmp_path: Path
) -> None:
    write_images(tmp_path, 1)
    named = [
        f"s3://{bucket}/in/a.png",  # allowed
        f"s3://{bucket}/in/sub/",  # allowed: a prefix under the list
        f"s3://{bucket}/other/c.png",  # another key of the same bucket
        f"s3://{bucket}/other/",  # a prefix: one failed item, never listed
        f"s3://{NO_SUCH_BUCKET}/x.png",  # never asked for
        "img000.png",  # a local file: stored in the deployment's store, outside the list
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"input": n}) + "\n" for n in named))
    allowed = (f"s3://{bucket}/in/",)
    job_id = _run(session_factory, s3_blobs, _request([str(manifest)], allowed), allowed)
    assert _outcomes(session_factory, job_id) == {
        f"s3://{bucket}/in/a.png": ("succeeded", None),
        f"s3://{bucket}/in/sub/b.png": ("succeeded", None),
        f"s3://{bucket}/other/c.png": ("failed", "input_not_allowed"),
        f"s3://{bucket}/other/": ("failed", "input_not_allowed"),
        f"s3://{NO_SUCH_BUCKET}/x.png": ("failed", "input_not_allowed"),
        "img000.png": ("succeeded", None),
    }
    with session_factory() as session:
        stored = session.scalars(select(Item).where(Item.source == "img000.png")).one()
    assert stored.input_uri.startswith(f"s3://{bucket}/store/inputs/sha256/")


def test_the_workers_hold_every_item_to_the_list_whatever_the_submit_checked(
    session_factory: SessionFactory, s3_blobs: Blobs, bucket: str, tmp_path: Path
) -> None:
    """A submit made where the list was not in force (a CLI with other settings) may name
    anything; workers whose list is set read only what it allows, and what a submit stored."""
    write_images(tmp_path / "local", 1)
    first = _submit(session_factory, s3_blobs, _request([str(tmp_path / "local")]))
    with session_factory() as session:
        blob = session.scalars(select(Item.input_uri).where(Item.job_id == first.job_id)).one()
    assert blob.startswith(f"s3://{bucket}/store/")
    sources = [f"s3://{bucket}/in/a.png", f"s3://{bucket}/other/c.png", blob]
    job_id = _run(
        session_factory,
        s3_blobs,
        _request([*sources, str(tmp_path / "local")]),  # unchecked at submit
        (f"s3://{bucket}/in/",),
    )
    local = str(tmp_path / "local" / "img000.png")
    assert _outcomes(session_factory, job_id) == {
        f"s3://{bucket}/in/a.png": ("succeeded", None),
        f"s3://{bucket}/other/c.png": ("failed", "input_not_allowed"),
        blob: ("failed", "input_not_allowed"),  # another user's stored input, named in place
        local: ("succeeded", None),  # stored by this submit: readable
    }


def test_an_openai_request_whose_image_is_outside_the_list_fails_alone(
    session_factory: SessionFactory, s3_blobs: Blobs, bucket: str, tmp_path: Path
) -> None:
    def line(custom_id: str, url: str) -> str:
        content = [
            {"type": "text", "text": "What?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]
        body = {"model": "m", "messages": [{"role": "user", "content": content}]}
        request = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
        return json.dumps({**request, "body": body}) + "\n"

    batch = tmp_path / "batch.jsonl"
    batch.write_text(
        line("ok", f"s3://{bucket}/in/a.png") + line("no", f"s3://{bucket}/other/c.png")
    )
    request = SubmitRequest.of(
        "chat",
        [str(batch)],
        "m",
        input_format=BatchFormat.openai,
        input_prefixes=(f"s3://{bucket}/in/",),
    )
    job_id = _submit(session_factory, s3_blobs, request).job_id
    with session_factory() as session:
        items = {i.custom_id: i for i in session.scalars(select(Item).where(Item.job_id == job_id))}
    assert read_input_error(items["ok"].request) is None
    refused = read_input_error(items["no"].request)
    assert refused is not None and refused[0] == "input_not_allowed"


def test_local_folders_in_the_list_bound_local_inputs_and_then_s3_needs_its_own_entry(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_images(tmp_path / "allowed", 1)
    write_images(tmp_path / "other", 1)
    allowed = (str(tmp_path / "allowed"),)
    assert _submit(session_factory, blobs, _request([str(tmp_path / "allowed")], allowed))
    (tmp_path / "allowed" / "link").symlink_to(tmp_path / "other")  # resolved: outside
    for outside in [
        str(tmp_path / "other"),
        str(tmp_path / "other" / "img000.png"),
        str(tmp_path / "allowed" / "link"),
        str(tmp_path / "allowed" / ".." / "other"),
        "s3://some-bucket/in/",  # no s3:// entry: no S3 input at all
    ]:
        with pytest.raises(RequestError) as refused:
            _submit(session_factory, blobs, _request([outside], allowed))
        assert refused.value.code == "input_not_allowed", outside
    assert _jobs(session_factory) == 1


def test_schedules_are_held_to_the_list_when_added_and_at_every_firing(
    session_factory: SessionFactory, s3_blobs: Blobs, bucket: str
) -> None:
    now = utcnow()

    def add(name: str, source: str, allowed: tuple[str, ...]) -> Schedule:
        return add_schedule(
            session_factory,
            name=name,
            source=source,
            request=_request([], allowed),
            every="15m",
            cron=None,
            max_prompt_chars=4000,
            now=now,
        )

    allowed = (f"s3://{bucket}/in/",)
    with pytest.raises(RequestError) as refused:
        add("other", f"s3://{bucket}/other/", allowed)
    assert refused.value.code == "input_not_allowed"
    # Added where the list was not in force, or before it narrowed: it never fires.
    add("older", f"s3://{bucket}/other/", ())
    publisher = CallbackPublisher(lambda _j, _i: None)
    later = now + timedelta(hours=1)
    fired = fire_due_schedules(
        session_factory, s3_blobs, publisher, now=later, input_prefixes=allowed
    )
    assert fired == [] and _jobs(session_factory) == 0
    with pytest.raises(RequestError) as refused:
        fire_due_schedules(
            session_factory, s3_blobs, publisher, names=["older"], input_prefixes=allowed
        )
    assert refused.value.code == "input_not_allowed"
    assert _jobs(session_factory) == 0
    # Unset: it fires as it always did.
    assert fire_due_schedules(session_factory, s3_blobs, publisher, names=["older"])
