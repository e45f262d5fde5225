"""A box in the model's frame and back, per processor configuration (``model.geometry``).

Each case draws a known red box on a synthetic image, runs transformers' own image processor
over it, finds the red box in what the processor produced (the canvas the model sees), and
checks that ``to_model`` puts the drawn box there (within one canvas pixel) and that
``to_source`` takes it back to the drawn box (within one pixel of the original image)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw
from transformers.models.clip import CLIPImageProcessorPil
from transformers.models.llava import LlavaImageProcessorPil
from transformers.models.llava_next import LlavaNextImageProcessorPil

from model.geometry import (
    ANYRES,
    CROP,
    PAD,
    Box,
    Frame,
    Preprocessing,
    frame_of,
    preprocessing_of,
    source_scale,
    to_model,
    to_source,
)
from model.images import SOURCE_SIZE, decode_image

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
GREY = (128, 128, 128)
RED = (255, 0, 0)


def _clip(size: dict[str, int] | None = None) -> Any:
    return CLIPImageProcessorPil(
        size=size or {"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_mean=MEAN, image_std=STD,
    )  # fmt: skip


def _padding() -> Any:
    return LlavaImageProcessorPil(
        do_pad=True, size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_mean=MEAN, image_std=STD,
    )  # fmt: skip


def _anyres() -> Any:
    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=pinpoints, image_mean=MEAN, image_std=STD,
    )  # fmt: skip


def _drawn(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    image = Image.new("RGB", size, GREY)
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=RED)
    return image


def _canvas(processor: Any, image: Image.Image, frame: Frame) -> np.ndarray:
    """What the processor made of ``image``, as one (channels, height, width) canvas: the
    grid of LLaVA-NeXT's tiles put back together in the grid's layout."""
    values = processor(images=[image], return_tensors="np")["pixel_values"][0]
    if frame.name != ANYRES:
        return np.asarray(values)
    tiles = values[1:]  # the first is the whole image, squashed: not the grid
    side = tiles.shape[-1]
    columns, rows = int(frame.canvas[0]) // side, int(frame.canvas[1]) // side
    grid = [
        np.concatenate(list(tiles[r * columns : (r + 1) * columns]), axis=2) for r in range(rows)
    ]
    return np.concatenate(grid, axis=1)


def _found(canvas: np.ndarray) -> Box:
    """The red box in a processed canvas, normalised to it (pixels at least half red)."""
    red = (1 - MEAN[0]) / STD[0], (0 - MEAN[1]) / STD[1]
    grey = (GREY[0] / 255 - MEAN[0]) / STD[0], (GREY[1] / 255 - MEAN[1]) / STD[1]
    mask = (canvas[0] > (red[0] + grey[0]) / 2) & (canvas[1] < (red[1] + grey[1]) / 2)
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    return (xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height)


def _close(a: Box, b: Box, within: tuple[float, float]) -> bool:
    return all(abs(p - q) <= within[i % 2] for i, (p, q) in enumerate(zip(a, b, strict=True)))


CASES = [
    # processor, image size, drawn box, the frame it must be in
    pytest.param(_padding, (400, 250), (60, 40, 300, 200), PAD, id="pad-wide"),
    pytest.param(_padding, (210, 380), (20, 100, 150, 370), PAD, id="pad-tall"),
    pytest.param(_clip, (500, 300), (150, 30, 350, 260), CROP, id="crop-wide"),
    pytest.param(_clip, (301, 517), (40, 130, 260, 400), CROP, id="crop-tall-odd"),
    # A crop larger than the resized short side: the image lies inside it, padded around.
    pytest.param(
        lambda: _clip(size={"shortest_edge": 301}),
        (401, 251),
        (100, 20, 320, 240),
        CROP,
        id="crop-larger-than-the-image",
    ),
    pytest.param(_anyres, (700, 300), (100, 50, 600, 280), ANYRES, id="anyres-wide"),
    pytest.param(_anyres, (350, 333), (10, 10, 300, 320), ANYRES, id="anyres-square"),
    pytest.param(_anyres, (300, 900), (50, 120, 250, 880), ANYRES, id="anyres-tall"),
]


@pytest.mark.parametrize(("make", "size", "box", "name"), CASES)
def test_a_drawn_box_goes_to_the_processors_frame_and_back_within_a_pixel(
    make: Any, size: tuple[int, int], box: tuple[int, int, int, int], name: str
) -> None:
    processor = make()
    prep = preprocessing_of(processor)
    assert prep is not None
    frame = frame_of(prep, size)
    assert frame.name == name
    image = _drawn(size, box)
    seen = _found(_canvas(processor, image, frame))
    predicted = to_model(tuple(float(v) for v in box), frame, size)  # type: ignore[arg-type]
    one_canvas_pixel = (1 / frame.canvas[0], 1 / frame.canvas[1])
    assert _close(predicted, seen, one_canvas_pixel), (predicted, seen)
    back = to_source(predicted, frame, size)
    assert _close(tuple(float(v) for v in back.pixels), box, (1, 1))  # type: ignore[arg-type]
    assert back.flags == ()
    # What the processor showed, taken back: within a canvas pixel in source pixels.
    from_seen = to_source(seen, frame, size).pixels
    per_pixel = (1 / frame.scale[0] + 1, 1 / frame.scale[1] + 1)
    assert _close(tuple(float(v) for v in from_seen), box, per_pixel)  # type: ignore[arg-type]


def test_a_box_in_the_padding_is_clipped_and_one_wholly_in_it_is_flagged() -> None:
    frame = frame_of(preprocessing_of(_padding()), (400, 200))  # type: ignore[arg-type]
    assert frame.image_box == (0.0, 84.0, 336.0, 252.0)  # 100 rows of mean colour above
    clipped = to_source((0.1, 0.05, 0.5, 0.6), frame, (400, 200))
    assert clipped.pixels[1] == 0 and clipped.flags == ("clipped_to_image",)
    outside = to_source((0.1, 0.0, 0.5, 0.2), frame, (400, 200))
    assert "outside_image" in outside.flags
    # Wholly in the padding and ending on the image's edge: nothing of the image is left.
    for edge in ((0.1, 0.0, 0.5, 0.25), (0.1, 0.75, 0.5, 1.0)):
        touching = to_source(edge, frame, (400, 200))
        assert touching.flags == ("outside_image",), edge
        assert touching.pixels[1] == touching.pixels[3], touching.pixels
    # A box of no area on the image itself lies in no padding.
    assert to_source((0.1, 0.25, 0.1, 0.25), frame, (400, 200)).flags == ()
    # Straying into the padding by less than the tolerance is the model's precision, not a flag.
    near = to_source((0.1, 0.248, 0.5, 0.6), frame, (400, 200), tolerance=0.005)
    assert near.flags == ()


def test_a_box_on_the_border_of_a_centre_crop_is_flagged() -> None:
    frame = frame_of(preprocessing_of(_clip()), (500, 300))  # type: ignore[arg-type]
    assert frame.name == CROP and frame.image_box[0] < 0
    left = to_source((0.0, 0.2, 0.4, 0.8), frame, (500, 300), tolerance=0.005)
    assert left.flags == ("beyond_crop",)
    # The crop cuts the wide image left and right, not top and bottom.
    top = to_source((0.3, 0.0, 0.6, 0.5), frame, (500, 300), tolerance=0.005)
    assert top.flags == ()


def _jpeg(image: Image.Image, orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_an_exif_rotated_image_maps_to_its_upright_pixels(orientation: int) -> None:
    """The box is drawn on the upright picture; the file stores it rotated, with the EXIF tag
    that turns it upright. Decoding turns it upright and records its upright size, and the
    box goes to the frame and back in upright pixels."""
    upright_size, box = (420, 260), (50, 30, 300, 200)
    upright = _drawn(upright_size, box)
    stored = upright.transpose(
        {
            6: Image.Transpose.ROTATE_90,
            8: Image.Transpose.ROTATE_270,
            3: Image.Transpose.ROTATE_180,
        }[orientation]
    )
    decoded = decode_image(_jpeg(stored, orientation))
    assert decoded.size == upright_size and decoded.info[SOURCE_SIZE] == upright_size
    processor = _padding()
    frame = frame_of(preprocessing_of(processor), decoded.size)  # type: ignore[arg-type]
    seen = _found(_canvas(processor, decoded, frame))
    back = to_source(seen, frame, decoded.info[SOURCE_SIZE]).pixels
    per_pixel = (1 / frame.scale[0] + 1, 1 / frame.scale[1] + 1)
    assert _close(tuple(float(v) for v in back), box, per_pixel)  # type: ignore[arg-type]


def test_a_jpeg_decoded_at_a_reduced_scale_maps_to_the_full_size_pixels() -> None:
    size, box = (2003, 1201), (400, 300, 1600, 1000)
    decoded = decode_image(_jpeg(_drawn(size, box)), min_side=336)
    assert decoded.size == (1002, 601) and decoded.info[SOURCE_SIZE] == size  # read at 1/2
    assert source_scale(size, decoded.size) == (2.0, 2.0)
    processor = _clip()
    frame = frame_of(preprocessing_of(processor), decoded.size)  # type: ignore[arg-type]
    predicted = to_model(tuple(float(v) for v in box), frame, size)  # type: ignore[arg-type]
    seen = _found(_canvas(processor, decoded, frame))
    assert _close(predicted, seen, (1.5 / frame.canvas[0], 1.5 / frame.canvas[1]))
    assert to_source(predicted, frame, size).pixels == box


def test_a_crop_larger_than_the_image_centres_it_as_each_backend_does() -> None:
    """Cutting 336 from 339 both backends start at row 1 (``(339 - 336) // 2``, and
    torchvision's ``int(3 / 2.0)``). On a 333-row image numpy pads ``ceil(3 / 2)`` = 2 rows
    above it, torchvision ``3 // 2`` = 1 (transformers' ``center_crop`` of each; torchvision is
    not installed here, so its arithmetic is what its source says)."""
    for backend in ("numpy", "torchvision"):
        cut = frame_of(
            Preprocessing(size=(339, 339), crop=(336, 336), crop_backend=backend), (339, 339)
        )
        assert cut.origin == (-1.0, -1.0)
    numpy = frame_of(Preprocessing(size=(333, 333), crop=(336, 336)), (333, 333))
    torchvision = frame_of(
        Preprocessing(size=(333, 333), crop=(336, 336), crop_backend="torchvision"), (333, 333)
    )
    assert numpy.origin == (2.0, 2.0) and torchvision.origin == (1.0, 1.0)


def test_the_tiny_checkpoints_processors_are_read_as_their_frames(
    llava_engine: Any, llava_next_engine: Any
) -> None:
    for engine, name, size, box in (
        (llava_engine, CROP, (40, 30), (8, 5, 30, 25)),
        (llava_next_engine, ANYRES, (60, 30), (10, 4, 50, 26)),
    ):
        processor = engine._processor.image_processor
        prep = preprocessing_of(processor)
        assert prep is not None
        frame = frame_of(prep, size)
        assert frame.name == name
        seen = _found(_canvas(processor, _drawn(size, box), frame))
        predicted = to_model(tuple(float(v) for v in box), frame, size)  # type: ignore[arg-type]
        assert _close(predicted, seen, (1 / frame.canvas[0], 1 / frame.canvas[1]))


def test_an_unknown_processor_is_not_guessed() -> None:
    class Odd:
        def __init__(self) -> None:
            self.size = {"longest_edge": 500}
            self.do_resize = True

    assert preprocessing_of(Odd()) is None
