"""One batch message, start to finish: claim → fetch_inputs → run_batch → record_results.

Every failure lands on the item it belongs to: a bad input fails only itself, an out-of-memory
batch is split in halves until what fails, fails alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError

from jobs.db import is_retryable, new_id
from jobs.errors import ItemErrorCode
from jobs.hooks import reached
from jobs.input_policy import INPUT_NOT_ALLOWED
from jobs.kinds.registry import decode_params, get_kind
from jobs.lifecycle import (
    ClaimedItem,
    ItemOutcome,
    claim_items,
    claim_next,
    finalise_jobs,
    jobs_ready_to_finalise,
    lost_a_worker,
    record_results,
    release_items,
)
from jobs.lifecycle.reuse import asks_for_reuse, reuse_results
from jobs.outcome import Outcome
from jobs.submit.openai_reader import images_refusal
from jobs.submit.sources import NO_INPUT, read_input_error, read_more_images
from model.engine import Engine
from model.errors import InputError
from storage import StorageError, TransientStorageError
from workers import metrics
from workers.ahead import Fetched, Flush, HandBack, Lookahead, Planned, PlannedUnit
from workers.generation import Task, generate_tasks
from workers.helpers import helper_pool
from workers.lease import LeaseKeeper
from workers.microbatch import MicroBatch
from workers.outcomes import failed
from workers.resources import WorkerResources

if TYPE_CHECKING:
    from model.documents import DocumentPages

log = logging.getLogger(__name__)

# Reading inputs waits on storage (S3 round trips), so it has threads of its own; decoding is
# CPU work, on the slot's few decode threads (``workers.helpers`` says why few). Both run while
# the model generates for earlier inputs, at a lower priority than the model's thread.
_FETCH_THREADS = 8


@dataclass(frozen=True)
class BatchReport:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    recorded: int = 0
    reused: int = 0  # of ``succeeded``: copies of earlier results, the model not run for them


def process_batch(
    item_ids: Sequence[str], res: WorkerResources, *, job_id: str | None = None
) -> BatchReport:
    """One message: a doorbell (no ``item_ids``) claims the next batch in priority and turn
    order (of ``job_id`` only, when given: the one-process runner's own job); a message that
    names its items claims those."""
    if not item_ids:
        with res.isolation.turn(alone=False):  # a doorbell never takes an item that lost a worker
            return _process_batch(item_ids, res, job_id=job_id)
    # Beside other slots, unless an item of it lost a worker before (``workers.isolation``);
    # the turn is taken before the claim, so a message waiting for it holds nothing.
    alone = res.settings.worker_slots > 1 and lost_a_worker(res.session_factory, item_ids)
    with res.isolation.turn(alone=alone):
        return _process_batch(item_ids, res)


def _process_batch(
    item_ids: Sequence[str], res: WorkerResources, *, job_id: str | None = None
) -> BatchReport:
    # The message's lease token is chosen before the claim, so a retried claim is the same
    # claim (``claim_with_retry``), and the heartbeat runs from before the claim to the last
    # write: a slow step anywhere in between (a claim waiting out a locked job row, reading,
    # decoding, generating, a record or hand-back retried through a database blip) never lets
    # the lease of a live batch run out (docs/design.md#I4).
    lease_token = new_id()
    started = time.monotonic()
    with LeaseKeeper(res.session_factory, lease_token, res.settings.lease_seconds):
        with res.claims.claim() as allowed:
            claimed = claim_with_retry(res, item_ids, lease_token, job_id=job_id) if allowed else []
        if not claimed:
            log.info("nothing to claim (no work, or a duplicate message) items=%d", len(item_ids))
            return BatchReport()
        reused = reuse_earlier_results(claimed, res)
        to_run = [item for item in claimed if item.id not in reused]
        outcomes, handed_back = run_batch(to_run, res) if to_run else ([], [])
        # Writes are retried while the database is unreachable, up to the lease's length.
        deadline = time.monotonic() + res.settings.lease_seconds
        recorded = record_with_retry(res, outcomes, deadline=deadline)
        released = release_with_retry(res, handed_back, deadline=deadline) if handed_back else 0
        if reused and not to_run:  # no record to end the job: this batch's copies may
            finish_jobs_with_retry(res, list(reused), deadline=deadline)
    failures = [o.outcome.error_code for o in outcomes if o.outcome.error_code is not None]
    succeeded = len(outcomes) - len(failures)
    report = BatchReport(
        len(claimed),
        succeeded + len(reused),
        len(failures),
        released,
        recorded + len(reused),
        len(reused),
    )
    log.info("batch done job=%s %s", claimed[0].job_id, report)
    metrics.record_batch(
        claimed[0].kind,
        time.monotonic() - started,
        succeeded,
        failures,
        released,
        reused=len(reused),
    )
    return report


def reuse_earlier_results(claimed: Sequence[ClaimedItem], res: WorkerResources) -> dict[str, str]:
    """Copies an earlier result to each claimed item that has one, when its job asked for
    reuse (``jobs.lifecycle.reuse``); returns ``{item id: source id}`` of those. Before
    anything is read or decoded, and only on a worker that knows what it serves (its model's
    revision). A database error here costs only the saving: the items are run instead."""
    if not asks_for_reuse(claimed[0].params):  # one message holds items of one job
        return {}
    serving = res.serving
    if serving is None:
        return {}
    reached("reuse:before")
    try:
        return reuse_results(
            res.session_factory,
            claimed,
            serving,
            pages=get_kind(claimed[0].kind).reads_documents,
        )
    except DBAPIError as exc:
        log.warning("looking up earlier results failed; running the items instead: %s", exc)
        return {}


def finish_jobs_with_retry(res: WorkerResources, item_ids: list[str], *, deadline: float) -> int:
    """Finalises the jobs of these items if they have nothing left to run (a batch whose every
    item was a copy has no record to do it), retried like a record."""

    def finish() -> int:
        done = jobs_ready_to_finalise(res.session_factory, of_items=item_ids)
        return finalise_jobs(res.session_factory, done) if done else 0

    return _with_retry("finalise", finish, deadline=deadline)


def run_batch(
    claimed: Sequence[ClaimedItem], res: WorkerResources
) -> tuple[list[ItemOutcome], list[ClaimedItem]]:
    """Fetches, decodes and generates; returns outcomes and the items to hand back.

    Inputs are read and decoded in thread pools at most about two model batches ahead of the
    model (``ahead_budget``; see ``workers.ahead``), and a document's pages are rendered one by
    one into the model batches, so the worker holds only what it is about to feed the model.
    What to generate for a unit, and what comes of it, is the job kind's (``jobs.kinds``): a
    caption, an extraction per page, or several questions, asked independently or as the turns
    of one conversation.
    """
    engine = res.engine
    kind = get_kind(claimed[0].kind)  # one message holds items of one job
    params = decode_params(kind, claimed[0].params)
    rendering = kind.document_rendering(params)
    outcomes: list[ItemOutcome] = []
    handed_back: list[ClaimedItem] = []
    queue: list[Task] = []
    units: dict[tuple[str, int | None], _UnitWork] = {}
    items_done: dict[str, list[tuple[int, list[Outcome]]]] = {}

    def finish_unit(item: ClaimedItem, page: int | None, got: list[Outcome], of: int) -> None:
        done = items_done.setdefault(item.id, [])
        done.append((page or 0, got))
        if len(done) == of:
            del items_done[item.id]
            done.sort(key=lambda unit: unit[0])
            result = kind.outcome(params, item, [got for _, got in done])
            outcomes.append(ItemOutcome(item.id, item.lease_token, result))

    def generate(ahead: Lookahead) -> None:
        nonlocal queue
        while queue:
            batch, queue = queue, []
            results = _generate_grouped(engine, batch, res.micro_batch)
            for task, result in zip(batch, results, strict=True):
                item, key = task.unit.item, (task.unit.item.id, task.unit.page)
                work = units[key]
                work.results[task.index] = result
                follow = kind.follow_up(params, item, task.conversation, result)
                if follow is not None:  # the next turn, in the context of this answer
                    queue.append(Task(task.unit, task.index + 1, follow, task.generation))
                    continue
                work.open -= 1
                if work.open == 0:  # the unit is done: its image can go
                    del units[key]
                    ahead.release(work.pixels)
                    got = [work.results[i] for i in sorted(work.results)]
                    finish_unit(item, task.unit.page, got, work.units_of_item)

    pool = helper_pool(_FETCH_THREADS, "llava-batch-fetch")
    decode_pool = helper_pool(res.decode_threads_per_slot, "llava-batch-decode")
    try:
        max_units, max_pixels = ahead_budget(res, res.micro_batch.size_for(engine))
        ahead = Lookahead(
            claimed,
            lambda item: fetch_input(item, res, rendering),
            pool,
            decode_pool=decode_pool,
            max_units=max_units,
            max_pixels=max_pixels,
        )
        for event in ahead:
            if isinstance(event, ItemOutcome):
                outcomes.append(event)
            elif isinstance(event, HandBack):
                handed_back.append(event.item)
            elif isinstance(event, Flush):
                generate(ahead)
            elif event.error_code is not None:
                ahead.release(event.pixels)
                item, message = event.unit.item, event.error_message or event.error_code
                if event.units_of_item == 1 and event.unit.page is None:
                    outcomes.append(failed(item, event.error_code, message))
                    continue
                lost = Outcome(
                    error_code=event.error_code, error_message=message, page=event.unit.page
                )
                finish_unit(item, event.unit.page, [lost], event.units_of_item)
            else:
                item = event.unit.item
                requests = kind.first_requests(params, item)
                how = kind.generation(params, item, configured=res.settings.max_new_tokens)
                units[(item.id, event.unit.page)] = _UnitWork(
                    event.pixels, event.units_of_item, len(requests)
                )
                queue += [Task(event.unit, i, conv, how) for i, conv in enumerate(requests)]
                if len(queue) >= res.micro_batch.size_for(engine):
                    generate(ahead)
        generate(ahead)
    finally:
        # On an error (engine dead), do not decode what is queued just to throw it away.
        decode_pool.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)
    return outcomes, handed_back


def ahead_budget(res: WorkerResources, micro_batch: int) -> tuple[int, int]:
    """What one slot may hold decoded ahead of the model: units and pixels.

    The worker as a whole holds about two model batches: alone, a slot decodes its next batch
    while its current one generates; with several slots, the other slots hold the next
    batches, so each holds its share of two (at least one batch, so batches stay full), and
    the pixel budget is split between them.
    """
    slots = max(1, res.settings.worker_slots)
    units = max(micro_batch, -(-2 * micro_batch // slots))
    return units, max(1, res.settings.max_batch_pixels // slots)


def _generate_grouped(engine: Engine, tasks: list[Task], micro_batch: MicroBatch) -> list[Outcome]:
    """Generates every task, in model batches of tasks with the same settings (budget, schema);
    returns their outcomes in the tasks' order."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, task in enumerate(tasks):
        groups.setdefault(task.generation.key(), []).append(index)
    results: list[Outcome | None] = [None] * len(tasks)
    for indices in groups.values():
        how = tasks[indices[0]].generation
        outcomes = generate_tasks(
            engine,
            [tasks[i] for i in indices],
            micro_batch=micro_batch,
            max_new_tokens=how.max_new_tokens,
            json_schema=how.json_schema,
            fit_to_context=how.fit_to_context,
            pattern=how.pattern,
        )
        for i, outcome in zip(indices, outcomes, strict=True):
            results[i] = outcome
    return [r for r in results if r is not None]


@dataclass
class _UnitWork:
    """A unit being generated for: what it holds, and its tasks' results so far."""

    pixels: int
    units_of_item: int
    open: int  # tasks whose last turn has not come back yet
    results: dict[int, Outcome] = field(default_factory=dict)


def fetch_input(
    item: ClaimedItem, res: WorkerResources, rendering: tuple[str, int] | None = None
) -> Fetched:
    """Reads one input and checks it against its budgets; its units are decoded later, within
    the worker's budget. None means: hand the item back (transient failure). Never raises:
    anything unexpected is that item's ``internal_error``."""
    refused = read_input_error(item.request)
    if refused is not None:  # refused at submit (a URL never fetched): nothing is read
        return failed(item, *refused)
    if item.input_uri == NO_INPUT:  # a request of text alone: nothing to read or decode
        return Planned(item, (PlannedUnit(item, None, 0, lambda: None),))
    more = read_more_images(item.request)
    takes = getattr(res.engine, "max_images", None)
    if takes is not None and 1 + len(more) > takes:  # judged before anything is read
        refusal = images_refusal(1 + len(more), res.engine.name, takes)
        return failed(item, ItemErrorCode.images_not_supported, refusal)
    policy = res.input_policy
    for source, uri in [(item.source, item.input_uri), *((uri, uri) for uri in more)]:
        if policy.restricted and not policy.allows_read(source, uri, res.blobs.holds(uri)):
            # Submitted where the list was not in force (another CLI's settings): the
            # deployment's credentials read only what its own list allows.
            return failed(item, INPUT_NOT_ALLOWED, policy.refusal(uri))
    try:
        data = res.blobs.read_uri(item.input_uri, max_bytes=res.settings.max_input_bytes)
        if more:
            # Each image under the budgets of one; their pixels together under the item's.
            datas = [data] + [
                res.blobs.read_uri(uri, max_bytes=res.settings.max_input_bytes) for uri in more
            ]
            return Planned(item, (plan_images(item, datas, res),))
        return Planned(item, plan_units(item, data, res, rendering))
    except TransientStorageError as exc:
        # Handed back with a growing wait and no attempt spent: an outage of minutes fails
        # nothing; only one that outlasts every retry does.
        if item.transient_failures < res.settings.storage_retry_limit:
            log.warning("transient storage error, handing back item=%s: %s", item.id, exc)
            return None
        return failed(item, exc.code, str(exc))
    except StorageError as exc:
        return failed(item, exc.code, str(exc))
    except InputError as exc:
        return failed(item, exc.code, exc.message)
    except Exception as exc:
        log.exception("unexpected error fetching item=%s job=%s", item.id, item.job_id)
        return failed(
            item,
            ItemErrorCode.internal_error,
            f"Reading the input failed unexpectedly ({type(exc).__name__}: {exc}).",
        )


def plan_units(
    item: ClaimedItem,
    data: bytes,
    res: WorkerResources,
    rendering: tuple[str, int] | None = None,
) -> tuple[PlannedUnit, ...]:
    """The units of one input with their cost in pixels, judged from headers and page sizes;
    nothing is decoded or rendered here. ``rendering``: the job kind's pages and dpi when it
    reads documents (decoded once per batch by the caller). Raises InputError for an input over
    its budgets."""
    from model.documents import is_pdf, render_pages
    from model.images import decode_image, read_image_size

    if rendering is not None and is_pdf(data):
        selection, dpi = rendering
        pages = render_pages(
            data,
            pages=selection,
            dpi=dpi,
            max_pages=res.settings.max_pdf_pages,
            max_pixels=res.settings.max_image_pixels,
            max_document_pixels=res.settings.max_item_pixels,
        )
        return tuple(
            PlannedUnit(item, size.number, size.pixels, partial(_render_page, pages, size.number))
            for size in pages.sizes
        )
    max_pixels = min(res.settings.max_image_pixels, res.settings.max_item_pixels)
    width, height = read_image_size(data, max_pixels=max_pixels)
    # Engines that know their input size let big JPEGs decode at a reduced scale.
    min_side = getattr(res.engine, "input_side", None)
    decode = partial(decode_image, data, max_pixels=max_pixels, min_side=min_side)
    return (PlannedUnit(item, None, width * height, decode),)


def plan_images(item: ClaimedItem, datas: Sequence[bytes], res: WorkerResources) -> PlannedUnit:
    """One unit of a request's several images, decoded together (a tuple, in order): each is
    judged from its header against the per-image pixel limit, and their pixels together
    against the item's (``LLAVA_BATCH_MAX_ITEM_PIXELS``), before anything is decoded. Raises
    InputError for an image over its budgets."""
    from model.images import decode_image, read_image_size

    max_pixels = min(res.settings.max_image_pixels, res.settings.max_item_pixels)
    pixels = 0
    for data in datas:
        width, height = read_image_size(data, max_pixels=max_pixels)
        pixels += width * height
    if pixels > res.settings.max_item_pixels:
        raise InputError(
            "image_too_large",
            f"The request's {len(datas)} images have {pixels} pixels together, over the "
            f"limit of {res.settings.max_item_pixels} per item (LLAVA_BATCH_MAX_ITEM_PIXELS).",
        )
    min_side = getattr(res.engine, "input_side", None)

    def decode() -> tuple[Any, ...]:
        return tuple(decode_image(d, max_pixels=max_pixels, min_side=min_side) for d in datas)

    return PlannedUnit(item, None, pixels, decode)


def _render_page(pages: DocumentPages, number: int) -> Any:
    return pages.render(number).image


def claim_with_retry(
    res: WorkerResources,
    item_ids: Sequence[str],
    lease_token: str | None = None,
    *,
    job_id: str | None = None,
) -> list[ClaimedItem]:
    """Claims the named items, or for a doorbell (no ``item_ids``) the next batch in turn,
    riding out a lock timeout or a database blip for a few seconds; past that the message is
    dropped and the sweeper rings again (or re-publishes a named item by age).

    Every try claims under the same ``lease_token`` (a fresh one if not given), so a try that
    failed after the claim had committed (starting the job hit a lock timeout, the COMMIT's
    reply was lost) is not a lost claim: the next try finds the items it already holds.
    """
    token = lease_token or new_id()
    delay = 0.5
    for attempt in range(4):
        try:
            if not item_ids:
                return claim_next(
                    res.session_factory,
                    worker=res.worker_name,
                    lease_seconds=res.settings.lease_seconds,
                    serving=res.serving,
                    job_id=job_id,
                    lease_token=token,
                    retry=attempt > 0,
                )
            return claim_items(
                res.session_factory,
                item_ids,
                worker=res.worker_name,
                lease_seconds=res.settings.lease_seconds,
                serving=res.serving,
                lease_token=token,
            )
        except DBAPIError as exc:
            if not is_retryable(exc):
                raise
            reached("claim:retrying")
            if attempt == 3:
                log.error("claim failed, the sweeper will re-publish: %s", exc.orig)
                return []
            log.warning("claim failed, retrying in %.1fs: %s", delay, exc.orig)
            time.sleep(delay)
            delay *= 2
    return []


def record_with_retry(
    res: WorkerResources, outcomes: Sequence[ItemOutcome], *, deadline: float
) -> int:
    """Records under the lease, retrying while the database is unreachable.

    Past the lease deadline another worker may own the items; the sweeper re-queues them. A
    retry after a write that did commit (its reply lost) writes nothing more: every row is
    fenced by its lease token and ``running``; it still finalises the batch's jobs.
    """
    return _with_retry(
        "results", lambda: record_results(res.session_factory, outcomes), deadline=deadline
    )


def release_with_retry(
    res: WorkerResources, handed_back: Sequence[ClaimedItem], *, deadline: float
) -> int:
    """Hands items back after a transient storage error, retried like the record (fenced the
    same way, so a retry after a committed hand-back counts nothing twice)."""
    return _with_retry(
        "hand-back",
        lambda: release_items(
            res.session_factory,
            handed_back,
            retry_base_seconds=res.settings.storage_retry_base_seconds,
            retry_max_seconds=res.settings.storage_retry_max_seconds,
        ),
        deadline=deadline,
    )


def _with_retry(what: str, write: Callable[[], int], *, deadline: float) -> int:
    delay = 0.5
    while True:
        try:
            return write()
        except DBAPIError as exc:
            if not is_retryable(exc):
                raise
            if time.monotonic() + delay > deadline:
                log.error("database unreachable until lease end; %s dropped: %s", what, exc)
                return 0
            log.warning("database unreachable, retrying in %.1fs: %s", delay, exc.orig)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
