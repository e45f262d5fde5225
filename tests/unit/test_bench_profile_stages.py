"""bench/profile_stages.py's bucketing of py-spy samples, on canned stacks (no profiler run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
try:
    import profile_stages
finally:
    sys.path.remove(str(ROOT / "bench"))

SLOT = [
    "Thread._bootstrap (threading.py:1002)",
    "Thread.run (threading.py:982)",
    "_run_slot (workers/local.py:221)",
    "process_batch (workers/pipeline.py:79)",
    "_process_batch (workers/pipeline.py:104)",
    "run_batch (workers/pipeline.py:256)",
    "_generate (workers/generation.py:94)",
    "TransformersEngine.generate (model/transformers_engine.py:320)",
]
POOL = [
    "Thread._bootstrap (threading.py:1002)",
    "Thread.run (threading.py:982)",
    "_worker (concurrent/futures/thread.py:83)",
    "_WorkItem.run (concurrent/futures/thread.py:58)",
]


@pytest.mark.parametrize(
    ("inner", "stage"),
    [
        # The processor's image part runs torch (a fast processor) and PIL: still preprocessing.
        (
            [
                "TransformersEngine._prepare (model/transformers_engine.py:506)",
                "LlavaProcessor.__call__ (transformers/models/llava/processing_llava.py:140)",
                "BaseImageProcessorFast.preprocess "
                "(transformers/image_processing_utils_fast.py:700)",
                "Module._call_impl (torch/nn/modules/module.py:1789)",
            ],
            "preprocessing",
        ),
        # ... and its tokenizer is tokenising, though called from inside the processor.
        (
            [
                "TransformersEngine._prepare (model/transformers_engine.py:506)",
                "LlavaProcessor.__call__ (transformers/models/llava/processing_llava.py:160)",
                "PreTrainedTokenizerBase.__call__ (transformers/tokenization_utils_base.py:2900)",
            ],
            "tokenising",
        ),
        (
            [
                "TransformersEngine._build_prompt (model/transformers_engine.py:490)",
                "render_jinja_template (transformers/utils/chat_template_utils.py:500)",
            ],
            "tokenising",
        ),
        (
            [
                "GenerationMixin.generate (transformers/generation/utils.py:2500)",
                "LlavaForConditionalGeneration.forward "
                "(transformers/models/llava/modeling_llava.py:400)",
                "Linear.forward (torch/nn/modules/linear.py:125)",
            ],
            "generate",
        ),
        # Waiting for the device lock while another slot generates: the engine's own frame.
        ([], "generate"),
        # A wait seen in Python inside a stage is idle, whatever the stage.
        (["Condition.wait (threading.py:327)"], "idle"),
    ],
)
def test_the_innermost_matching_frame_of_the_model_call_gives_the_stage(
    inner: list[str], stage: str
) -> None:
    assert profile_stages.classify(SLOT + inner) == stage


def test_pool_threads_decode_and_the_slot_claims_records_and_waits() -> None:
    decode = [
        "_decode (workers/ahead.py:183)",
        "decode_image (model/images.py:55)",
        "ImageFile.load (PIL/ImageFile.py:300)",
    ]
    assert profile_stages.classify(POOL + decode) == "decode"
    slot = SLOT[:5]
    claim = [
        "claim_with_retry (workers/pipeline.py:447)",
        "claim_next (jobs/lifecycle/claims.py:242)",
        "Session.execute (sqlalchemy/orm/session.py:2555)",
    ]
    assert profile_stages.classify(slot + claim) == "claim"
    record = [
        "record_with_retry (workers/pipeline.py:485)",
        "_with_retry (workers/pipeline.py:511)",
        "<lambda> (workers/pipeline.py:486)",
        "record_results (jobs/lifecycle/records.py:60)",
        "Connection.execute (sqlalchemy/engine/base.py:1400)",
    ]
    assert profile_stages.classify(slot + record) == "record"
    waiting = [
        "Lookahead.__iter__ (workers/ahead.py:169)",
        "Future.result (concurrent/futures/_base.py:451)",
        "Condition.wait (threading.py:327)",
    ]
    assert profile_stages.classify(slot + waiting) == "idle"
    assert profile_stages.classify(POOL[:3]) == "idle"  # between tasks, in its queue's get
    # Finishing a task wakes the waiter: not a wait.
    done = [
        "Future.set_result (concurrent/futures/_base.py:549)",
        "Condition.notify (threading.py:382)",
    ]
    assert profile_stages.classify(POOL + done) == "hand-over"
    beat = [
        "Thread._bootstrap (threading.py:1002)",
        "LeaseKeeper._run (workers/lease.py:46)",
        "renew_lease (jobs/lifecycle/claims.py:460)",
        "Session.execute (sqlalchemy/orm/session.py:2555)",
    ]
    assert profile_stages.classify(beat) == "other database"


def test_samples_are_grouped_by_what_each_thread_did_not_by_stale_names() -> None:
    def line(tid: str, name: str, frames: list[str], count: int) -> str:
        return ";".join([f"thread ({tid}): {name}", *frames]) + f" {count}"

    decode = [*POOL, "_decode (workers/ahead.py:183)", "decode_image (model/images.py:55)"]
    seen = "\n".join(
        [
            # py-spy gave a new slot thread an ended lease keeper's name (a reused ident).
            line("11", "lease-keeper", SLOT, 50),
            line("11", "lease-keeper", [*SLOT[:5], "Condition.wait (threading.py:327)"], 30),
            line("12", "llava-batch-decode_0", decode, 40),
            line("12", "llava-batch-decode_0", POOL[:3], 10),
            line("13", "llava-batch-decode_0", POOL[:3], 25),  # never seen at work
            line("1", "MainThread", ["<module> (bench/profile_stages.py:330)"], 100),
        ]
    )
    running = "\n".join(
        [
            line("11", "lease-keeper", SLOT, 45),
            line("12", "llava-batch-decode_0", decode, 20),
            line("1", "MainThread", ["<module> (bench/profile_stages.py:330)"], 5),
        ]
    )
    summary = profile_stages.summarise(seen, running, rate=100, window=1.0, wall=0.9, cores=2)
    threads = summary["threads"]
    assert list(threads) == ["slot (calls the model)", "decode pool", "main thread"]
    slot = threads["slot (calls the model)"]
    assert slot["threads"] == 1
    assert slot["stages"] == {
        "generate": {"cpu_s": 0.45, "off_cpu_s": 0.05},
        "idle": {"cpu_s": 0.0, "off_cpu_s": 0.3},
    }
    decode_pool = threads["decode pool"]
    assert decode_pool["threads"] == 2
    assert decode_pool["stages"]["decode"] == {"cpu_s": 0.2, "off_cpu_s": 0.2}
    assert decode_pool["stages"]["idle"] == {"cpu_s": 0.0, "off_cpu_s": 0.35}
    assert summary["core_s"] == 2.0
    assert summary["cpu_s_by_stage"] == {"decode": 0.2, "generate": 0.45, "other": 0.05}
    table = profile_stages.render(summary)
    assert "decode pool (2 thread(s)): 0.20 s on CPU, 0.55 s off" in table
    assert "not this process      1.30" in table
