"""load_engine and TransformersEngine on the tiny checkpoints, through the real-checkpoint path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from model.engine import EngineSpec, GenerationRequest
from model.errors import DeviceOutOfMemoryError, InputError, ModelLoadError
from model.tiny import ensure_tiny_checkpoint
from model.transformers_engine import TransformersEngine, load_engine, neutralise_special_tokens


def _requests(n: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            Image.new("RGB", (30 + 13 * i, 50 - 4 * i), (20 * i, 90, 200 - 15 * i)),
            "describe the image" + " in detail" * i,
        )
        for i in range(n)
    ]


def test_generate_returns_one_result_per_request(tiny_engine: TransformersEngine) -> None:
    requests = _requests(5)
    results = tiny_engine.generate(requests, max_new_tokens=7)
    assert len(results) == len(requests)
    for result in results:
        assert isinstance(result.text, str)
        assert 0 <= result.tokens_out <= 7
    assert any(result.text for result in results)
    assert tiny_engine.generate([], max_new_tokens=7) == []
    with pytest.raises(ValueError):
        tiny_engine.generate(requests, max_new_tokens=0)


def test_name_is_the_configured_model(
    llava_engine: TransformersEngine, llava_next_engine: TransformersEngine
) -> None:
    assert llava_engine.name == "tiny-llava"
    assert llava_next_engine.name == "tiny-llava-next"


def test_a_local_directory_loads_like_a_real_checkpoint(tiny_cache: Path, tmp_path: Path) -> None:
    source = ensure_tiny_checkpoint(tiny_cache, "tiny-llava")
    local = shutil.copytree(source, tmp_path / "my-llava")
    engine = load_engine(EngineSpec(model=str(local), device="cpu"))
    assert engine.name == str(local)
    [result] = engine.generate(_requests(1), max_new_tokens=4)
    assert result.tokens_out <= 4


def test_literal_image_token_in_a_prompt_is_harmless(tiny_engine: TransformersEngine) -> None:
    tricky = ["<image>", "what is <image> here <image>", "ends with </s> and <pad>"]
    requests = [GenerationRequest(Image.new("RGB", (40, 30)), prompt) for prompt in tricky]
    results = tiny_engine.generate(requests, max_new_tokens=5)
    assert len(results) == 3
    # The neutralised prompt holds exactly one image placeholder: the template's own.
    assert tiny_engine.count_prompt_tokens("<image> <image>") < (
        tiny_engine.count_prompt_tokens("x") + tiny_engine.count_prompt_tokens("x")
    )


def test_neutralise_special_tokens() -> None:
    specials = ["<image>", "</s>"]
    assert neutralise_special_tokens("a <image> b </s>", specials) == "a < image> b < /s>"
    assert neutralise_special_tokens("plain text", specials) == "plain text"


def test_prompt_token_count_and_context(
    llava_engine: TransformersEngine, llava_next_engine: TransformersEngine
) -> None:
    short = llava_engine.count_prompt_tokens("hi")
    longer = llava_engine.count_prompt_tokens("hi " + "describe the image in detail " * 20)
    assert longer > short + 20
    # tiny llava: 2x2 patches = 4 image tokens; NeXT adds tiles, so its worst case is larger.
    assert short > 4
    assert llava_next_engine.count_prompt_tokens("hi") > short
    assert llava_engine.max_context == 1024


def test_a_prompt_that_cannot_fit_is_refused(llava_engine: TransformersEngine) -> None:
    context = llava_engine.max_context
    prompt = "the " * (context - 60)
    fits = llava_engine.count_prompt_tokens(prompt)
    assert fits < context
    room = context - fits
    image = Image.new("RGB", (30, 30))
    [result] = llava_engine.generate([GenerationRequest(image, prompt)], max_new_tokens=room)
    assert result.tokens_out <= room
    with pytest.raises(InputError) as info:
        llava_engine.generate(
            [GenerationRequest(image, "ok"), GenerationRequest(image, prompt)],
            max_new_tokens=room + 1,
        )
    assert info.value.code == "prompt_too_long"


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory. Tried"), RuntimeError("CUDA out of memory.")],
)
def test_out_of_memory_becomes_device_out_of_memory(
    llava_engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def explode(**_: Any) -> Any:
        raise error

    monkeypatch.setattr(llava_engine._model, "generate", explode)
    with pytest.raises(DeviceOutOfMemoryError, match="batch of 2"):
        llava_engine.generate(_requests(2), max_new_tokens=3)


def test_other_runtime_errors_are_not_called_oom(
    llava_engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(**_: Any) -> Any:
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(llava_engine._model, "generate", explode)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        llava_engine.generate(_requests(2), max_new_tokens=3)


def _copy_checkpoint(tiny_cache: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ensure_tiny_checkpoint(tiny_cache, "tiny-llava"), tmp_path / "ck"))


def test_pickle_only_checkpoint_is_refused_before_loading(tiny_cache: Path, tmp_path: Path) -> None:
    checkpoint = _copy_checkpoint(tiny_cache, tmp_path)
    (checkpoint / "model.safetensors").unlink()
    # Not even a valid pickle: the refusal must come before anything reads it.
    (checkpoint / "pytorch_model.bin").write_bytes(b"\x80\x04 would run code")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_engine(EngineSpec(model=str(checkpoint), device="cpu"))


@pytest.mark.parametrize("config_name", ["config.json", "tokenizer_config.json"])
def test_auto_map_checkpoint_is_refused(tiny_cache: Path, tmp_path: Path, config_name: str) -> None:
    checkpoint = _copy_checkpoint(tiny_cache, tmp_path)
    config_path = checkpoint / config_name
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoModelForImageTextToText": "modeling_evil.EvilModel"}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="auto_map"):
        load_engine(EngineSpec(model=str(checkpoint), device="cpu"))


def test_missing_directory_and_unavailable_hub_id_are_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_engine(EngineSpec(model=str(tmp_path / "nope"), device="cpu"))
    # Tests run with HF_HUB_OFFLINE=1, so a hub id that is not cached cannot be fetched.
    with pytest.raises(ModelLoadError, match="llava-batch-tests/no-such-model"):
        load_engine(EngineSpec(model="llava-batch-tests/no-such-model", device="cpu"))


def test_broken_weights_are_a_load_error(tiny_cache: Path, tmp_path: Path) -> None:
    checkpoint = _copy_checkpoint(tiny_cache, tmp_path)
    (checkpoint / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ModelLoadError):
        load_engine(EngineSpec(model=str(checkpoint), device="cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_cuda_without_a_gpu_is_a_load_error(tiny_cache: Path) -> None:
    with pytest.raises(ModelLoadError, match="CUDA"):
        load_engine(EngineSpec(model="tiny-llava", cache_dir=tiny_cache, device="cuda"))


@pytest.mark.parametrize(
    "kwargs",
    [{"dtype": "fp8"}, {"quantization": "3bit"}, {"device": "tpu"}, {"device": "cuda:x"}],
)
def test_engine_spec_refuses_bad_values(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        EngineSpec(**kwargs)  # type: ignore[arg-type]


def test_explicit_dtype_is_used(tiny_cache: Path) -> None:
    engine = load_engine(
        EngineSpec(model="tiny-llava", cache_dir=tiny_cache, device="cpu", dtype="bfloat16")
    )
    assert engine._model.dtype == torch.bfloat16
    [result] = engine.generate(_requests(1), max_new_tokens=3)
    assert result.tokens_out <= 3


def test_a_conversation_of_text_alone_needs_no_image(tiny_engine: TransformersEngine) -> None:
    """No image placeholder, no pixels; beside requests with images it reads the same."""
    text_alone = GenerationRequest(None, "Name a colour.")
    (alone,) = tiny_engine.generate([text_alone], max_new_tokens=6)
    with_image = _requests(2)
    mixed = tiny_engine.generate([with_image[0], text_alone, with_image[1]], max_new_tokens=6)
    assert mixed[1] == alone
    assert mixed[0] == tiny_engine.generate(with_image[:1], max_new_tokens=6)[0]
    # Only the template and the text: fewer tokens read than with an image.
    assert 0 < alone.tokens_in < mixed[0].tokens_in
