"""Prompt units: keys and positions of text runs and image spans, computed by hand."""

import numpy as np

from minicpmv_gguf.runtime.media import Picture, pixel_digest
from minicpmv_gguf.runtime.units import ImageSpan, PictureLayout, Prompt, TextRun


def test_keys_and_positions_follow_the_units_in_order():
    span = ImageSpan("abc", 1, n_tokens=2, n_pos=2)
    prompt = Prompt((TextRun((5, 6)), TextRun((7,)), span, TextRun((8,))), stable=3)
    assert prompt.keys == (5, 6, 7, ("abc", 1, 0), ("abc", 1, 1), 8)
    assert prompt.n_pos == 6 and prompt.image_positions == 2
    assert prompt.text_tokens == (5, 6, 7, 8)
    assert [pos for pos, _ in prompt.placed()] == [0, 2, 3, 5]


def test_a_layout_counts_only_its_image_positions():
    layout = PictureLayout(
        "abc", (TextRun((1, 2)), ImageSpan("abc", 1, 4, 4), TextRun((3,)), ImageSpan("abc", 3, 4, 4))
    )
    assert layout.image_positions == 8


def test_equal_pixels_give_equal_digests_whatever_the_object():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    a, b = Picture(rgb, "a.png"), Picture(rgb.copy(), "b.png")
    assert a.serial != b.serial and a.digest == b.digest == pixel_digest(rgb)
    assert Picture(rgb.reshape(3, 2, 3), "c.png").digest != a.digest  # same bytes, another shape
