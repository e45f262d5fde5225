"""One job's items for review (filtered, 100 a page, keyset by seq), one item whole, the
decisions and edits (``jobs.review``), the export, and the pictures, by item id only."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, ImmutableMultiDict, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from jobs.db import SessionFactory
from jobs.errors import ItemNotFoundError, RequestError
from jobs.kinds.registry import get_kind
from jobs.review import (
    DECISIONS,
    REVIEW_STATES,
    Count,
    ItemDetail,
    ItemFilter,
    decide,
    decide_filtered,
    edit,
    error_codes,
    item_counts,
    item_detail,
    list_items,
)
from jobs.states import TERMINAL_ITEM_STATES, ItemStatus
from jobs.web.boxes import Box, boxes_of
from jobs.web.images import FULL_SIDE, THUMB_SIDE, Picture, picture_of, placeholder
from jobs.web.pages import deps_of, shown, take_flash, with_flash
from jobs.web.security import check_csrf

PAGE_SIZE = 100
# What the integer columns a URL's numbers are compared with hold (seq, an input's position):
# a larger one is refused here, not a database error (SQLite's OverflowError, PostgreSQL's
# "integer out of range").
LARGEST = 2**31 - 1


def filter_of(params: QueryParams | ImmutableMultiDict[str, Any]) -> ItemFilter:
    """The filter chips' state, from a query string or a form; a value no item can match is
    refused (``invalid_filter``), not shown as an empty page that looks like "no such items"."""
    return ItemFilter(
        status=_text(params.get("status")),
        error_code=_text(params.get("code")),
        review=_text(params.get("review")),
        text=_text(params.get("q")),
    ).checked()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def filter_query(flt: ItemFilter, **changes: Any) -> str:
    """The query string of ``flt`` with ``changes`` (None removes a key): the chips' links."""
    values = {
        "status": flt.status,
        "code": flt.error_code,
        "review": flt.review,
        "q": flt.text,
    }
    values.update(changes)
    kept = {key: value for key, value in values.items() if value is not None}
    return "?" + urlencode(kept) if kept else ""


def _position(params: QueryParams) -> tuple[int | None, int | None]:
    try:
        after = int(params["after"]) if "after" in params else None
        before = int(params["before"]) if "before" in params else None
    except ValueError:
        after = before = LARGEST + 1
    if any(n is not None and not -LARGEST <= n <= LARGEST for n in (after, before)):
        raise HTTPException(400, "after and before are item sequence numbers.")
    return after, before


def job_page(request: Request) -> Response:
    """The job's items, a page at a time. Its counts (per state, per error code, ``N of M
    shown``) are each counted up to a bound (``jobs.review.Count``: ``10,000+`` beyond), so a
    1M-item job's page costs about what a small one's does."""
    from jobs.queries import find_job, job_row
    from jobs.web.app import render

    deps = deps_of(request)
    flt = filter_of(request.query_params)
    after, before = _position(request.query_params)
    with deps.session_factory() as session:
        job = find_job(session, request.path_params["job_id"])
        row = job_row(job)
        schema = job.params.get("schema")
    counts = item_counts(deps.session_factory, job.id)
    page = list_items(
        deps.session_factory, job.id, flt, after=after, before=before, limit=PAGE_SIZE
    )
    codes = error_codes(deps.session_factory, job.id)
    here = request.url.path + ("?" + request.url.query if request.url.query else "")
    return shown(
        request,
        render(
            request,
            "job.html",
            job=row,
            counts=counts,
            done=Count.sum(n for state, n in counts.items() if state in TERMINAL_ITEM_STATES),
            total=Count.sum(counts.values()),
            page=page,
            flt=flt,
            codes=codes,
            statuses=[s.value for s in ItemStatus],
            review_states=REVIEW_STATES,
            link=lambda **changes: filter_query(flt, **changes),
            has_schema=schema is not None,
            here=here,
            flash=take_flash(request),
        ),
    )


def item_page(request: Request) -> Response:
    from jobs.web.app import render

    deps = deps_of(request)
    detail = item_detail(deps.session_factory, request.path_params["item_id"])
    if detail is None:
        raise ItemNotFoundError(f"No item {request.path_params['item_id']}.")
    return shown(
        request,
        render(
            request,
            "item.html",
            item=detail,
            boxes=boxes_shown(detail),
            editing=request.query_params.get("edit") == "1",
            back=_local(request.query_params.get("back")) or f"/jobs/{detail.job_id}",
            problem=None,
            edited=None,
            flash=take_flash(request),
        ),
    )


async def _decision(request: Request) -> tuple[FormData, str]:
    """The form of a decision (checked against forgery) and the decision it asks for."""
    await check_csrf(request)
    form = await request.form()
    decision = form.get("decision")
    if not isinstance(decision, str) or decision not in DECISIONS:
        raise HTTPException(400, "The decision is approved or rejected.")
    return form, decision


async def decide_one(request: Request) -> Response:
    """``y``/``n`` on a row (a fetch from the page's script: JSON back), or its button."""
    form, decision = await _decision(request)
    deps = deps_of(request)
    item_id = request.path_params["item_id"]
    # decide refuses an unknown item itself (item_not_found); 0 changed is an item already so.
    await run_in_threadpool(decide, deps.session_factory, [item_id], decision, deps.reviewer)
    if "x-csrf-token" in request.headers:
        return JSONResponse({"item_id": item_id, "decision": decision, "reviewer": deps.reviewer})
    back = _local(form.get("back")) or f"/items/{item_id}"
    return RedirectResponse(back, status_code=303)


async def decide_shown(request: Request) -> Response:
    """Approve or reject every item the current filter shows (all its pages), nothing else."""
    form, decision = await _decision(request)
    deps = deps_of(request)
    flt = filter_of(form)
    job_id = request.path_params["job_id"]
    changed = await run_in_threadpool(
        decide_filtered, deps.session_factory, job_id, flt, decision, deps.reviewer
    )
    response = RedirectResponse(f"/jobs/{job_id}{filter_query(flt)}", status_code=303)
    return with_flash(response, [f"{changed} item(s) {decision} by {deps.reviewer}"])


async def edit_one(request: Request) -> Response:
    """Keeps the model's output and stores the reviewer's text beside it (``jobs.review``)."""
    from jobs.web.app import render

    await check_csrf(request)
    deps = deps_of(request)
    form = await request.form()
    edited = form.get("edited")
    item_id = request.path_params["item_id"]
    back = _local(form.get("back"))
    if not isinstance(edited, str):
        raise HTTPException(400, "The edit has no text.")
    try:
        await run_in_threadpool(edit, deps.session_factory, item_id, edited, deps.reviewer)
    except RequestError as exc:
        detail = await run_in_threadpool(item_detail, deps.session_factory, item_id)
        if detail is None:
            raise
        return render(
            request,
            "item.html",
            422,
            item=detail,
            boxes=boxes_shown(detail),
            editing=True,
            back=back or f"/jobs/{detail.job_id}",
            problem=f"{exc.message} [{exc.code}]",
            edited=edited,
            flash=[],
        )
    target = f"/items/{item_id}" + ("?" + urlencode({"back": back}) if back else "")
    return with_flash(RedirectResponse(target, status_code=303), ["edit saved"])


def export(request: Request) -> Response:
    """The job's results as ``llava-batch results JOB`` writes them (JSON Lines)."""
    from jobs.queries import find_job

    deps = deps_of(request)
    with deps.session_factory() as session:
        job = find_job(session, request.path_params["job_id"])
        job_id = job.id
    return StreamingResponse(
        _export_lines(deps.session_factory, job_id),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.jsonl"'},
    )


def _export_lines(session_factory: SessionFactory, job_id: str) -> Iterator[str]:
    """The lines of ``results JOB`` (jsonl, with the reviews), by the same export, a thousand
    items at a time."""
    from jobs.db import Job
    from jobs.exports import ResultFormat, open_job_export

    with session_factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        buffer = io.StringIO()
        export = open_job_export(session, job, ResultFormat.jsonl, buffer)
        for count, item in enumerate(export.items, 1):
            export.writer.write(item)
            if count % 1000 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()


def thumbnail(request: Request) -> Response:
    return _picture(request, side=THUMB_SIDE, cached=True)


def full_image(request: Request) -> Response:
    return _picture(request, side=FULL_SIDE, cached=False)


def _picture(request: Request, *, side: int, cached: bool) -> Response:
    """An item's input (``input`` N of a request of several images; page ``page`` of a PDF),
    re-encoded as a JPEG; a placeholder for one that cannot be shown, its reason in
    ``X-Picture-Problem``. Only ever an input of the item named: no URI comes from the
    request."""
    from storage.errors import StorageError

    deps = deps_of(request)
    page = _number(request.query_params.get("page", "1"), "page")
    which = _number(request.query_params.get("input", "1"), "input")
    item_id = request.path_params["item_id"]
    uri, key = _input_of(deps.session_factory, item_id, which)
    # ``boxes=1``: the item's boxes drawn on its image (the item page); never cached, since
    # the thumbnail cache is per input and an edit may move them.
    boxes = (
        _boxes(deps.session_factory, item_id)
        if request.query_params.get("boxes") == "1" and (page, which) == (1, 1)
        else []
    )
    cached = cached and not boxes
    picture = deps.thumbnails.get(key, page) if cached else None
    if picture is None:
        try:
            data = deps.blobs.read_uri(uri, max_bytes=deps.settings.max_input_bytes)
        except StorageError as exc:  # not cached: the store may answer next time
            picture = Picture(placeholder(), getattr(exc, "code", "storage_error"))
        else:
            picture = picture_of(data, page=page, side=side, budgets=deps.budgets, boxes=boxes)
            # A page the input lacks is the asker's number, not the input's: one cached file
            # per number asked would fill the disk.
            if cached and picture.problem != "pdf_page_out_of_range":
                deps.thumbnails.put(key, page, picture)
    headers = {
        "Cache-Control": "private, max-age=86400",
        "Content-Disposition": "inline",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if picture.problem is not None:
        headers["X-Picture-Problem"] = picture.problem
    return Response(picture.data, media_type="image/jpeg", headers=headers)


def _boxes(session_factory: SessionFactory, item_id: str) -> list[Box]:
    detail = item_detail(session_factory, item_id)
    return [] if detail is None else boxes_shown(detail)


def boxes_shown(detail: ItemDetail) -> list[Box]:
    """The boxes the item page draws: the reviewer's edit when there is one, else the model's."""
    result = detail.edited_json if detail.edited_json is not None else detail.result_json
    return boxes_of(get_kind(detail.job_kind).finds_boxes, result)


def _number(text: str, name: str) -> int:
    # isascii: str.isdigit takes "²", which int refuses.
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= LARGEST:
        raise HTTPException(400, f"{name} is a number from 1.")
    return int(text)


def _input_of(session_factory: SessionFactory, item_id: str, which: int) -> tuple[str, str]:
    """The URI of the item's input ``which`` (1: its first, ``items.input_uri``; then its
    ``item_inputs`` in order), and the key its thumbnails are cached under (the input's
    sha256 when known: the same input in many jobs is rendered once)."""
    from sqlalchemy import select

    from jobs.db import Item, ItemInput

    with session_factory() as session:
        item = session.get(Item, item_id)
        if item is None:
            raise ItemNotFoundError(f"No item {item_id}.")
        if which == 1:
            return item.input_uri, item.input_sha256 or item.id
        other = session.execute(
            select(ItemInput.uri, ItemInput.sha256).where(
                ItemInput.item_id == item_id, ItemInput.position == which - 1
            )
        ).first()
    if other is None:
        raise HTTPException(404, f"Item {item_id} has no input {which}.")
    return other.uri, other.sha256 or f"{item_id}-{which}"


def _local(value: Any) -> str | None:
    """``value`` if it is a path of this site (a "back" link), else None: never a redirect to
    another site."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or "\\" in value:
        return None
    return value
