"""The offline tiny checkpoints: complete, deterministic, cached, safe to build concurrently."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from safetensors import safe_open

import model.tiny as tiny
from model.tiny import build_tiny_checkpoint, ensure_tiny_checkpoint

EXPECTED_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("flavour", ["llava", "llava-next"])
def test_rebuild_is_byte_identical(tmp_path: Path, flavour: str) -> None:
    first = _files(build_tiny_checkpoint(tmp_path / "a", flavour))
    second = _files(build_tiny_checkpoint(tmp_path / "b", flavour))
    assert set(first) == EXPECTED_FILES
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], f"{name} differs between two builds"


def test_rebuild_in_another_process_is_byte_identical(tmp_path: Path) -> None:
    # Workers on different machines share nothing but the recipe: hash seeds, thread pools and
    # tokenizer training must not leak into the bytes.
    code = (
        "import sys; from pathlib import Path; from model.tiny import build_tiny_checkpoint; "
        "build_tiny_checkpoint(Path(sys.argv[1]), 'llava-next')"
    )
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "other")], cwd=root, check=True)
    here = build_tiny_checkpoint(tmp_path / "here", "llava-next")
    assert _files(tmp_path / "other") == _files(here)


def _config(directory: Path) -> dict[str, object]:
    config: dict[str, object] = json.loads((directory / "config.json").read_text())
    return config


def test_flavours_differ(tmp_path: Path) -> None:
    llava = _config(build_tiny_checkpoint(tmp_path / "a", "llava"))
    nxt = _config(build_tiny_checkpoint(tmp_path / "b", "llava-next"))
    assert llava["model_type"] == "llava"
    assert nxt["model_type"] == "llava_next"
    assert "auto_map" not in llava and "auto_map" not in nxt


def test_checkpoint_is_float32_with_widths_bitsandbytes_can_quantise(tmp_path: Path) -> None:
    directory = build_tiny_checkpoint(tmp_path / "ck", "llava")
    with safe_open(str(directory / "model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
        assert names
        for name in names:
            tensor = weights.get_tensor(name)
            assert str(tensor.dtype) == "torch.float32", name
            # A Linear weight is (out, in): its input width must be a multiple of 64.
            if name.endswith(".weight") and tensor.ndim == 2 and "embed" not in name:
                assert tensor.shape[1] % 64 == 0, (name, tuple(tensor.shape))


def test_tokenizer_has_image_and_pad_tokens_and_no_bare_space(tmp_path: Path) -> None:
    directory = build_tiny_checkpoint(tmp_path / "ck", "llava")
    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    assert " " not in vocab
    assert {"<image>", "<pad>", "<s>", "</s>", "<unk>"} <= set(vocab)
    assert 300 <= len(vocab) <= 1000
    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert config["padding_side"] == "left"
    template = (directory / "chat_template.jinja").read_text()
    assert "USER: " in template and "ASSISTANT:" in template


def test_unknown_flavour_and_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_tiny_checkpoint(tmp_path / "x", "llama")
    with pytest.raises(ValueError):
        ensure_tiny_checkpoint(tmp_path, "tiny-gpt")


def test_ensure_builds_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    real_build = tiny.build_tiny_checkpoint

    def counting_build(dest: Path, flavour: str) -> Path:
        built.append(flavour)
        return real_build(dest, flavour)

    monkeypatch.setattr(tiny, "build_tiny_checkpoint", counting_build)
    first = ensure_tiny_checkpoint(tmp_path, "tiny-llava-next")
    second = ensure_tiny_checkpoint(tmp_path, "tiny-llava-next")
    assert first == second
    assert built == ["llava-next"]
    assert first.parent == tmp_path and first.name.startswith("tiny-llava-next-")
    assert set(p.name for p in first.iterdir()) == EXPECTED_FILES
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary leftovers


def test_a_concurrent_builder_winning_the_race_is_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_build = tiny.build_tiny_checkpoint
    final = tmp_path / f"tiny-llava-{tiny._recipe_hash('tiny-llava')}"

    def build_while_another_process_finishes(dest: Path, flavour: str) -> Path:
        real_build(final, flavour)  # the "other process" renames its copy into place first
        (final / "winner").write_text("x")
        return real_build(dest, flavour)

    monkeypatch.setattr(tiny, "build_tiny_checkpoint", build_while_another_process_finishes)
    assert ensure_tiny_checkpoint(tmp_path, "tiny-llava") == final
    assert (final / "winner").exists()  # the winner's copy was kept, not replaced
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_concurrent_threads_all_get_the_same_complete_checkpoint(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(ensure_tiny_checkpoint(cache, "tiny-llava"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 1
    assert [p.name for p in cache.iterdir()] == [results[0].name]
    # Concurrent builds must not disturb each other's seeded weights.
    assert _files(results[0]) == _files(build_tiny_checkpoint(tmp_path / "ref", "llava"))
