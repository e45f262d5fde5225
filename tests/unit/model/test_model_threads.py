"""TransformersEngine shared by threads, as a worker's slots share it: one batch is prepared
on the host while another holds the device, concurrent calls give what serial ones give, and a
worker on the CPU runs torch on one intra-op thread beside its own threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

from model.engine import GenerationRequest, Turn
from model.fake import FakeEngine
from model.transformers_engine import TransformersEngine
from storage import open_blobs
from tests.helpers import make_resources


def _batch(seed: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            Image.new("RGB", (40 + 9 * i + seed, 60 - 3 * i), (30 * i, 80 + seed, 150)),
            f"question {seed}-{i}" + " more" * i,
        )
        for i in range(4)
    ]


def test_a_batch_is_prepared_while_another_holds_the_device(
    tiny_engine: TransformersEngine,
) -> None:
    got: list[list[str]] = []
    with tiny_engine._device_lock:  # another batch is generating
        caller = threading.Thread(
            target=lambda: got.append(
                [r.text for r in tiny_engine.generate(_batch(1), max_new_tokens=3)]
            )
        )
        caller.start()
        for _ in range(600):  # templated, tokenised, images preprocessed: only the device left
            if tiny_engine.prepared_waiting == 1:
                break
            caller.join(0.05)
        assert tiny_engine.prepared_waiting == 1
        assert not got
    caller.join(60)
    assert len(got) == 1 and len(got[0]) == 4
    assert tiny_engine.prepared_waiting == 0


def test_concurrent_calls_give_what_serial_calls_give(tiny_engine: TransformersEngine) -> None:
    batches = [_batch(seed) for seed in range(4)]
    # Shared images (several questions about one photo) take the pre-computed-features path.
    photo = Image.new("RGB", (48, 32), (200, 10, 10))
    batches.append([GenerationRequest(photo, (Turn("user", f"q{i}"),)) for i in range(3)])
    serial = [[r.text for r in tiny_engine.generate(batch, max_new_tokens=5)] for batch in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(
            pool.map(
                lambda batch: [r.text for r in tiny_engine.generate(batch, max_new_tokens=5)],
                batches * 2,
            )
        )
    assert concurrent == serial * 2


@pytest.fixture
def two_torch_threads() -> Iterator[None]:
    """torch's thread count is the process's: start every test from two (a machine's default
    on two cores or more) and put back what was there."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _torch_threads_in_a_slot() -> int:
    """What a slot thread (a new thread, as Celery's pool and the embedded runner start)
    would run torch with."""
    seen: list[int] = []
    slot = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    slot.start()
    slot.join()
    return seen[0]


def _worker_loads(engine: object, tmp_path_factory: pytest.TempPathFactory) -> None:
    blobs = open_blobs(str(tmp_path_factory.mktemp("blobs")))
    res = make_resources(None, blobs, engine)  # type: ignore[arg-type]  # no database needed
    assert res.engine is engine


def test_a_worker_on_the_cpu_runs_torch_on_one_intra_op_thread(
    llava_engine: TransformersEngine,
    two_torch_threads: None,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert _torch_threads_in_a_slot() == 2
    _worker_loads(llava_engine, tmp_path_factory)
    # Two slots calling torch with pools of two threads each made every batch twice as slow.
    assert _torch_threads_in_a_slot() == 1


def test_an_operators_omp_num_threads_is_left_as_it_is(
    llava_engine: TransformersEngine,
    two_torch_threads: None,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert llava_engine.limit_cpu_threads(1) is False
    _worker_loads(llava_engine, tmp_path_factory)
    assert _torch_threads_in_a_slot() == 2


def test_an_engine_without_the_limit_is_loaded_as_it_is(
    two_torch_threads: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _worker_loads(FakeEngine(), tmp_path_factory)  # no torch in it: nothing to limit
    assert _torch_threads_in_a_slot() == 2
