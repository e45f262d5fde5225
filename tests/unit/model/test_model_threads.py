"""TransformersEngine shared by threads, as a worker's slots share it: one batch is prepared
on the host while another holds the device, and concurrent calls give what serial ones give."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from model.engine import GenerationRequest, Turn
from model.transformers_engine import TransformersEngine


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
