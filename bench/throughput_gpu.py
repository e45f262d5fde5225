"""``bench/throughput.py --gpu``: a full-size random LLaVA on CUDA, against the physical limit.

    python bench/throughput.py --gpu [--flavour llava-1.5-7b] [--precisions bfloat16,4bit]
                               [--items 256] [--batch-size 32] [--max-new-tokens 60]
                               [--batch-sizes 16,32,64]
    python bench/throughput.py --gpu --check     # the same plumbing on CPU, scaled down

Builds (once, in ``--checkpoint-cache``) a checkpoint with the published shapes and random
weights (``bench/fullsize.py``), loads it for each precision through the project's loader
(``EngineSpec`` → ``load_engine``; 4-bit is the project's bitsandbytes nf4 setting), and measures
(a) the system path (submit → claim → fetch → decode → generate → record, embedded) and (b) the
plain batched script (``generate`` over pre-decoded images), as in the CPU mode. It prints
items/s, generated tokens/s and the share of the physical limit (``bench/fullsize_limits.py``) for
the prompt and output lengths measured. ``--batch-sizes`` measures each micro-batch size in turn
and names the one that wins: the most system items/s for each precision. ``--check`` runs
everything up to the CUDA call on the CPU with a scaled-down checkpoint (same tokenizer, image
size and token counts), so CI can test this path; its figures are not GPU figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fullsize_arch import FLAVOURS
from fullsize_limits import GPUS, PRECISIONS, Gpu, find_gpu, physical_limit

from model.engine import (
    DelegatingEngine,
    Engine,
    EngineSpec,
    GenerationRequest,
    GenerationResult,
    default_cache_dir,
)

NO_GPU_MESSAGE = (
    "bench/throughput.py --gpu: no CUDA GPU is present (torch.cuda.is_available() is False), "
    "so nothing was measured; --gpu --check tests this path on the CPU"
)
_CHECK_DIVISOR = 32  # --check: widths / 32 and 2 layers per tower, real tokens and image sizes
_CHECK_LAYERS = 2


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("GPU mode")
    group.add_argument("--gpu", action="store_true", help="full-size random model on CUDA")
    group.add_argument("--check", action="store_true", help="with --gpu: the plumbing on CPU")
    group.add_argument("--flavour", choices=sorted(FLAVOURS), default="llava-1.5-7b")
    group.add_argument(
        "--precisions",
        default="bfloat16,4bit",
        help=f"comma-separated, from {', '.join(PRECISIONS)} (and float32 with --check)",
    )
    group.add_argument(
        "--batch-sizes",
        help="comma-separated micro-batch sizes, each measured in turn (default: --batch-size)",
    )
    group.add_argument("--checkpoint-cache", type=Path, help="where full-size checkpoints live")
    group.add_argument("--gpu-model", choices=sorted(GPUS), help="the limit's GPU if unknown")
    group.add_argument("--json-out", type=Path, help="also write the results here as JSON")


@dataclass(frozen=True)
class Measured:
    precision: str
    batch_size: int
    path: str  # "system" or "raw"
    items: int
    seconds: float
    tokens_in: int
    tokens_out: int
    limit_items_per_s: float | None

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds

    @property
    def share_of_limit(self) -> float | None:
        return None if not self.limit_items_per_s else self.items_per_s / self.limit_items_per_s


class CountingEngine(DelegatingEngine):
    """An engine that counts what passes through it; everything else goes to the real one."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.items = self.tokens_in = self.tokens_out = 0

    def reset(self) -> None:
        self.items = self.tokens_in = self.tokens_out = 0

    def generate(
        self, requests: Sequence[GenerationRequest], **options: Any
    ) -> list[GenerationResult]:
        results = super().generate(requests, **options)
        self.items += len(results)
        self.tokens_in += sum(r.tokens_in for r in results)
        self.tokens_out += sum(r.tokens_out for r in results)
        return results

    def __getattr__(self, name: str) -> Any:  # input_side, suggested_batch_size, …
        return getattr(self._engine, name)


def run_gpu_mode(
    args: argparse.Namespace,
    *,
    make_images: Callable[[Path, int], list[Path]],
    run_raw: Callable[[list[Path], Engine, argparse.Namespace], float],
    run_embedded: Callable[[Path, Engine, argparse.Namespace, str], float],
) -> int:
    """The ``--gpu`` entry point, given the CPU mode's measuring functions; returns the exit
    status. Without CUDA (and without ``--check``) it says so in one line and returns 1."""
    import torch

    if not args.check and not torch.cuda.is_available():
        print(NO_GPU_MESSAGE, file=sys.stderr)
        return 1
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    allowed = (*PRECISIONS, "float32") if args.check else PRECISIONS
    unknown = [p for p in precisions if p not in allowed]
    if unknown or not precisions:
        print(f"--precisions: choose from {', '.join(allowed)}, not {unknown}", file=sys.stderr)
        return 2
    batch_sizes = parse_batch_sizes(args.batch_sizes, args.batch_size)
    if batch_sizes is None:
        print(f"--batch-sizes: positive whole numbers, not {args.batch_sizes!r}", file=sys.stderr)
        return 2
    gpu = _limit_gpu(args, torch)
    arch = FLAVOURS[args.flavour]
    try:
        checkpoint = _checkpoint(args, torch)
    except OSError as exc:  # no room for 14 GB, an unwritable cache: one line, no traceback
        print(f"bench/throughput.py --gpu: cannot build the checkpoint: {exc}", file=sys.stderr)
        return 1
    from workers.resources import load_transformers_engine

    measured: list[Measured] = []
    with tempfile.TemporaryDirectory() as tmp:
        images_dir = Path(tmp) / "images"
        images_dir.mkdir()
        paths = make_images(images_dir, args.items)
        for precision in precisions:
            spec = EngineSpec(
                model=str(checkpoint),
                dtype="bfloat16" if precision == "4bit" else precision,
                device="cpu" if args.check else "cuda",
                quantization="4bit" if precision == "4bit" else "none",
            )
            engine = CountingEngine(load_transformers_engine(spec))
            for batch_size in batch_sizes:
                sized = argparse.Namespace(**{**vars(args), "batch_size": batch_size})
                # Each size warmed on its own: the kernels a batch shape picks, and the
                # allocator's blocks for it, are paid before its clock starts.
                warm = [GenerationRequest(_first_image(paths), "warm up")] * batch_size
                engine.generate(warm, max_new_tokens=args.max_new_tokens)
                for path in ("raw", "system"):
                    engine.reset()
                    if path == "raw":
                        seconds = run_raw(paths, engine, sized)
                    else:
                        tag = f"gpu-{precision}-{batch_size}"
                        seconds = run_embedded(images_dir, engine, sized, tag)
                    limit = None
                    if gpu is not None and engine.items:
                        limit = physical_limit(
                            arch,
                            gpu,
                            prompt_tokens=round(engine.tokens_in / engine.items),
                            new_tokens=max(1, round(engine.tokens_out / engine.items)),
                            precision="bfloat16" if precision == "float32" else precision,
                        ).items_per_s
                    measured.append(
                        Measured(
                            precision,
                            batch_size,
                            path,
                            args.items,
                            seconds,
                            engine.tokens_in,
                            engine.tokens_out,
                            limit,
                        )
                    )
            del engine
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    _report(args, gpu, measured, device=_device_name(args, torch))
    return 0


def parse_batch_sizes(listed: str | None, default: int) -> list[int] | None:
    """The micro-batch sizes to measure, in the order given (duplicates dropped); None for a
    list that is not of positive whole numbers."""
    if listed is None:
        return [default]
    try:
        sizes = [int(part) for part in listed.split(",") if part.strip()]
    except ValueError:
        return None
    if not sizes or min(sizes) < 1:
        return None
    return list(dict.fromkeys(sizes))


def best_batch_sizes(measured: Sequence[Measured]) -> dict[str, int]:
    """For each precision, the micro-batch size whose system path ran the most items/s."""
    best: dict[str, Measured] = {}
    for m in measured:
        if m.path == "system" and (
            m.precision not in best or m.items_per_s > best[m.precision].items_per_s
        ):
            best[m.precision] = m
    return {precision: m.batch_size for precision, m in best.items()}


def _checkpoint(args: argparse.Namespace, torch: Any) -> Path:
    from fullsize import ensure_fullsize_checkpoint  # imports torch

    cache = args.checkpoint_cache or default_cache_dir() / "fullsize"
    if args.check:
        return ensure_fullsize_checkpoint(
            cache, args.flavour, divisor=_CHECK_DIVISOR, layers=_CHECK_LAYERS
        )
    return ensure_fullsize_checkpoint(cache, args.flavour, init_device="cuda")


def _limit_gpu(args: argparse.Namespace, torch: Any) -> Gpu | None:
    if args.gpu_model:
        return GPUS[args.gpu_model]
    if args.check:
        return GPUS["h100-sxm"]  # nominal: --check only exercises the arithmetic
    return find_gpu(str(torch.cuda.get_device_name(0)))


def _device_name(args: argparse.Namespace, torch: Any) -> str:
    if args.check:
        return "CPU (--check: scaled-down checkpoint, not a GPU figure)"
    return str(torch.cuda.get_device_name(0))


def _first_image(paths: list[Path]) -> Any:
    from model.images import decode_image

    return decode_image(paths[0].read_bytes())


def _report(
    args: argparse.Namespace, gpu: Gpu | None, measured: list[Measured], *, device: str
) -> None:
    sizes = ",".join(str(size) for size in dict.fromkeys(m.batch_size for m in measured))
    print(
        f"model={args.flavour} (random weights, published shapes) device={device} "
        f"items={args.items} batch_size={sizes} max_new_tokens={args.max_new_tokens}"
    )
    limit_name = gpu.name if gpu else "unknown GPU: pass --gpu-model"
    print(f"physical limit on {limit_name} (prefill and decode overlapped; fullsize_limits)")
    for m in measured:
        share = m.share_of_limit
        share_text = f"{100 * share:5.1f} % of {m.limit_items_per_s:.1f}" if share else "n/a"
        label = "(a) system" if m.path == "system" else "(b) raw   "
        print(
            f"{m.precision:>9} b={m.batch_size:<3} {label} {m.items_per_s:8.2f} items/s "
            f"{m.tokens_out / m.seconds:9.1f} out tok/s {m.tokens_in / m.seconds:10.1f} "
            f"prompt tok/s  {share_text} img/s limit"
        )
    best = best_batch_sizes(measured)
    for precision, size in best.items():
        print(f"{precision:>9} micro-batch that wins (system items/s): {size}")
    if args.json_out:
        rows = [
            {**asdict(m), "items_per_s": m.items_per_s, "share_of_limit": m.share_of_limit}
            for m in measured
        ]
        document = {"device": device, "results": rows, "best_batch_size": best}
        args.json_out.write_text(json.dumps(document, indent=2))
