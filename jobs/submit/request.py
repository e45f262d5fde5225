"""A submit request and what it builds: the typed request, its checks that need no input, the
job row it becomes, and what a submit returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from jobs.db import Item, Job, new_id, utcnow
from jobs.errors import RequestError
from jobs.input_policy import parse_entries
from jobs.kinds.base import ItemAsk, KindParams
from jobs.kinds.registry import get_kind
from jobs.lifecycle.expiry import check_priority
from jobs.limits import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_MODEL_CHARS,
    MAX_NAME_CHARS,
    check_option,
    check_text,
)
from jobs.metadata import check_metadata
from jobs.settings import DEFAULT_MAX_INPUT_BYTES
from jobs.states import ItemStatus, JobStatus
from jobs.submit.fingerprint import fingerprint_of
from jobs.submit.openai_reader import BatchFormat
from jobs.submit.reuse_key import job_basis, reuse_key
from jobs.submit.sources import InputSpec
from model.checkpoints import max_context_of


@dataclass(frozen=True)
class SubmitRequest:
    """A request to run ``kind`` over ``sources``; ``params`` are the kind's typed parameters."""

    kind: str
    sources: Sequence[str]
    model: str
    params: KindParams
    name: str | None = None
    idempotency_key: str | None = None
    # --meta key=value labels (jobs.metadata), checked by jobs.metadata.check_metadata.
    metadata: Mapping[str, str] | None = None
    # A limit, not part of the job (never fingerprinted): LLAVA_BATCH_MAX_INPUT_BYTES.
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    # Also a limit: what an input may name, LLAVA_BATCH_INPUT_PREFIXES (jobs.input_policy).
    input_prefixes: tuple[str, ...] = ()
    # ``submit batch``: each source is a .jsonl file of requests (OpenAI-Batch or our manifest
    # format); an OpenAI file's model becomes the job's. None: sources as every kind reads them.
    input_format: BatchFormat | None = None
    # The user named the model (--model): it serves every input, whatever a file's lines name.
    model_chosen: bool = False
    # ``run``: this process loads ``model`` (--model, else LLAVA_BATCH_MODEL) and runs the job
    # on it. A file's model name is then only a label, and one that names another model is
    # refused (``model_not_served``): an input file never chooses a model to load or download.
    runs_here: bool = False
    # How the job shares the fleet; neither is part of what an idempotency key stands for
    # (a priority changes while the job runs: ``llava-batch priority``).
    priority: int = 0
    completion_window_seconds: int | None = None  # None: no window
    # Kept this long after it ends, then deleted (jobs.retention); None: until deleted. Not
    # part of what an idempotency key stands for either: how long, not what.
    retain_seconds: int | None = None
    # Where the job's results are written when it ends (--deliver-to: jobs.delivery.targets,
    # as parse_target stores it) and in which format (--deliver-format). Not part of what an
    # idempotency key stands for: where the results go, not what they are.
    output_uri: str | None = None
    output_format: str | None = None
    # A limit: where a target may lie, LLAVA_BATCH_OUTPUT_PREFIXES (jobs.delivery.targets).
    output_prefixes: tuple[str, ...] = ()
    # --reuse: an item whose result an earlier item already has (same key, model and
    # revision: jobs.lifecycle.reuse) gets a copy instead of a model run. Not part of what an
    # idempotency key stands for either: it changes the cost, not the results.
    reuse: bool = False
    # Where the job's end is POSTed, signed (jobs.delivery.webhook); checked by whoever builds
    # the request (jobs.delivery.webhook.notify_url_of). Not part of what an idempotency key
    # stands for: who is told, not what is done.
    notify_url: str | None = None

    def identity(self, sources: Any) -> dict[str, Any]:
        """What an idempotency key stands for (``jobs.submit.fingerprint``), ``sources``
        describing the inputs."""
        payload = {
            "kind": self.kind,
            "sources": sources,
            "params": self.params.model_dump(by_alias=True),
            "model": self.model,
            "name": self.name,
        }
        if self.metadata:  # only when given: keys of jobs without metadata stay as they were
            payload["metadata"] = dict(self.metadata)
        return payload

    @classmethod
    def of(
        cls,
        kind: str,
        sources: Sequence[str],
        model: str,
        *,
        name: str | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        input_prefixes: Sequence[str] = (),
        default_max_new_tokens: int = 64,
        input_format: BatchFormat | None = None,
        model_chosen: bool = False,
        priority: int = 0,
        completion_window_seconds: int | None = None,
        retain_seconds: int | None = None,
        output_uri: str | None = None,
        output_format: str | None = None,
        output_prefixes: Sequence[str] = (),
        reuse: bool = False,
        notify_url: str | None = None,
        **params: Any,
    ) -> SubmitRequest:
        """Builds the kind's parameters from keywords (``prompt=``, ``schema=``, ``questions=``;
        None means "the default"); ones that do not validate are a request error. With no
        ``max_new_tokens`` the kind chooses (``default_max_new_tokens``: the setting)."""
        handler = get_kind(kind)
        check_priority(priority)
        target, fmt = output_of(output_uri, output_format)
        given = {key: value for key, value in params.items() if value is not None}
        try:
            typed = handler.params_type.model_validate(given)
            if typed.max_new_tokens is None:
                chosen = handler.default_max_new_tokens(typed, default_max_new_tokens)
                typed = typed.model_copy(update={"max_new_tokens": chosen, "budget_chosen": True})
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or kind
            raise RequestError(
                f"{kind}: {where}: {problem['msg']}.", code="invalid_request"
            ) from None
        return cls(
            kind=handler.name,
            sources=list(sources),
            model=model,
            params=typed,
            name=name,
            idempotency_key=idempotency_key,
            metadata=metadata,
            max_input_bytes=max_input_bytes,
            input_prefixes=parse_entries(list(input_prefixes)),
            input_format=input_format,
            model_chosen=model_chosen,
            priority=priority,
            completion_window_seconds=completion_window_seconds,
            retain_seconds=retain_seconds,
            output_uri=target,
            output_format=fmt,
            output_prefixes=tuple(output_prefixes),
            reuse=reuse,
            notify_url=notify_url,
        )


def output_of(target: str | None, fmt: str | None) -> tuple[str | None, str | None]:
    """``--deliver-to`` as stored (``jobs.delivery.targets.parse_target``) and its format
    (jsonl unless told); a format with no target is refused."""
    from jobs.delivery.targets import parse_target
    from jobs.exports import ResultFormat

    if fmt is not None and fmt not in ResultFormat.__members__:
        raise RequestError(
            f"--deliver-format {fmt[:50]!r} is not one of jsonl, csv, openai, txt.",
            code="invalid_option",
        )
    if target is None:
        if fmt is not None:
            raise RequestError("--deliver-format goes with --deliver-to.", code="invalid_option")
        return None, None
    return parse_target(target), fmt or ResultFormat.jsonl.value


def check_output(request: SubmitRequest) -> None:
    """What a target and format cannot be for this request's kind, or outside a schedule."""
    from jobs.delivery.targets import check_allowed, names_schedule

    if request.output_uri is not None:
        check_allowed(request.output_uri, request.output_prefixes)
    if request.output_uri is not None and names_schedule(request.output_uri):
        raise RequestError(
            f"--deliver-to {request.output_uri!r} names {{schedule}}: only a schedule's target "
            "may (schedule add … --deliver-to).",
            code="invalid_output",
        )
    if request.output_format == "txt" and not get_kind(request.kind).one_text:
        raise RequestError(
            f"--deliver-format txt writes one text per item; a {request.kind} job has several "
            "answers per item: use jsonl, csv or openai.",
            code="invalid_option",
        )


@dataclass(frozen=True)
class SubmitResult:
    job_id: str
    item_count: int
    # Every queued item has had its message sent. False: some wait for the sweeper (the broker
    # did not take them, now or, for an existing job, when it was submitted).
    dispatched: bool
    existing: bool = False
    model: str = ""  # the job's: the one its workers serve
    # False: the job was cancelled while its rows were still being written (it holds only
    # ``item_count`` of its inputs); for an existing job, another submit is still writing it.
    complete: bool = True
    # Items written failed at submit: their inputs were refused on their own (empty, over the
    # byte limit, a URL never fetched). Counted for a new job only.
    failed: int = 0


def check_request(request: SubmitRequest, max_prompt_chars: int) -> None:
    """Everything about a request that can be refused before touching any input."""
    check_option("--batch-size", request.params.batch_size, "message_size")
    if request.params.max_new_tokens is not None:  # None: the worker's setting applies
        check_option("--max-new-tokens", request.params.max_new_tokens, "max_new_tokens")
    # The model is stored in jobs.model and names a queue: PostgreSQL would refuse a longer one
    # (or undecodable bytes from argv) only after the inputs were stored.
    check_text(
        request.model,
        what="--model" if request.model_chosen else "The model (LLAVA_BATCH_MODEL)",
        code="invalid_option",
        max_chars=MAX_MODEL_CHARS,
    )
    if request.name is not None:
        check_text(request.name, what="--name", code="invalid_name", max_chars=MAX_NAME_CHARS)
    if request.idempotency_key is not None:
        check_text(
            request.idempotency_key,
            what="--idempotency-key",
            code="invalid_idempotency_key",
            max_chars=MAX_IDEMPOTENCY_KEY_CHARS,
        )
    if request.metadata is not None:
        check_metadata(request.metadata)
    get_kind(request.kind).check(request.params, max_prompt_chars=max_prompt_chars)
    check_fits_context(request)
    check_output(request)


def check_fits_context(request: SubmitRequest) -> None:
    """Refuses a ``--max-new-tokens`` the model's context cannot hold next to any prompt: every
    item would fail ``prompt_too_long`` in the worker, one by one. The context is read from the
    checkpoint's config on this machine (``model.checkpoints``, torch-free); with none here the
    worker's own check stays the only one. A budget the kind chose is shrunk to fit there."""
    budget = request.params.max_new_tokens
    if budget is None or request.params.budget_chosen:
        return
    context = max_context_of(request.model)
    if context is not None and budget >= context:
        raise RequestError(
            f"--max-new-tokens {budget} is beyond the context of the model {request.model}: "
            f"{context} tokens, the prompt and image included; ask for fewer.",
            code="invalid_option",
        )


def build_job(
    request: SubmitRequest,
    inputs: Sequence[InputSpec],
    stored: Sequence[tuple[str, str | None]],
    asks: Sequence[ItemAsk] | None = None,
    *,
    fingerprint: str | None = None,
) -> tuple[Job, list[Item]]:
    """The rows of a new job (not yet added to any session)."""
    kind = get_kind(request.kind)
    job_id = new_id()
    params: dict[str, Any] = {
        **request.params.model_dump(by_alias=True),
        "fingerprint": fingerprint or fingerprint_of(request),
    }
    if request.reuse:  # only when asked: the params of every other job stay as they were
        params["reuse"] = True
    asks = asks if asks is not None else [ItemAsk()] * len(inputs)
    now = utcnow()
    job_prompt = kind.job_prompt(request.params)
    basis = job_basis(kind.name, params)
    items = [
        Item(
            id=new_id(),
            job_id=job_id,
            seq=seq,
            custom_id=spec.custom_id,
            source=spec.source,
            input_uri=uri,
            input_sha256=sha256,
            prompt=ask.prompt,
            request=ask.request,
            # An input refused on its own is terminal from the start (as ``item_rows`` writes it).
            status=ItemStatus.queued if spec.input_error is None else ItemStatus.failed,
            attempts=0,
            error_code=spec.input_error[0] if spec.input_error else None,
            error_message=spec.input_error[1] if spec.input_error else None,
            finished_at=now if spec.input_error else None,
            # (Several images are written by jobs.submit.rows, never here: no key then.)
            reuse_key=None
            if spec.input_error or spec.others
            else reuse_key(
                basis,
                prompt=ask.prompt if ask.prompt is not None else job_prompt,
                request=ask.request,
                input_uri=uri,
                input_sha256=sha256,
            ),
        )
        for seq, (spec, (uri, sha256), ask) in enumerate(zip(inputs, stored, asks, strict=True))
    ]
    job = Job(
        id=job_id,
        name=request.name,
        kind=kind.name,
        status=JobStatus.queued,
        prompt=job_prompt,
        params=params,
        model=request.model,
        idempotency_key=request.idempotency_key,
        priority=request.priority,
        completion_window_seconds=request.completion_window_seconds,
        retain_seconds=request.retain_seconds,
        expires_at=(
            None
            if request.completion_window_seconds is None
            else now + timedelta(seconds=request.completion_window_seconds)
        ),
    )
    job.notify_url = request.notify_url
    if request.metadata:  # none: SQL NULL, not a JSON null
        job.job_metadata = dict(request.metadata)
    if request.output_uri is not None:  # its own folder, named now: jobs.delivery.targets
        from jobs.delivery.targets import job_folder

        job.output_uri = job_folder(request.output_uri, job_id=job_id, made_at=now)
        job.output_format = request.output_format
    return job, items
