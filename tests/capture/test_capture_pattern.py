"""The PatternDriver's picture (no kernel): frame numbers round-trip, survive noise, damaged codes are
rejected; the animation changes every frame; the no-signal frame shows text."""

from __future__ import annotations

import numpy as np
import pytest

from vkmsremote.capture.driver import (
    CODE_HEIGHT,
    CODE_WIDTH,
    decode_frame_number,
    draw_pattern,
    encode_frame_number,
    pattern_base,
)
from vkmsremote.capture.nosignal import BACKGROUND, FOREGROUND, no_signal_frame, text_mask


@pytest.mark.parametrize("number", [0, 1, 2, 0x5A5A5A5A, 0xFFFFFFFF, 123456789])
def test_frame_number_round_trip(number: int) -> None:
    px = np.zeros((40, 600, 4), np.uint8)
    encode_frame_number(px, number)
    assert decode_frame_number(px) == number


def test_frame_number_survives_noise_but_not_damage() -> None:
    px = np.zeros((CODE_HEIGHT, CODE_WIDTH, 4), np.uint8)
    encode_frame_number(px, 0xC0FFEE)
    noisy = np.clip(px.astype(int) + np.random.default_rng(1).integers(-40, 41, px.shape), 0, 255).astype(np.uint8)
    assert decode_frame_number(noisy) == 0xC0FFEE
    broken = px.copy()
    broken[16:32, 0:16] = broken[0:16, 0:16]  # complement cell no longer the complement
    assert decode_frame_number(broken) is None
    assert decode_frame_number(np.full_like(px, 128)) is None
    assert decode_frame_number(px[:, :100]) is None
    with pytest.raises(ValueError):
        encode_frame_number(px[:, :100], 1)


def test_animation_changes_each_frame_and_carries_number() -> None:
    base = pattern_base(1024, 768)
    a = np.zeros_like(base)
    b = np.zeros_like(base)
    draw_pattern(a, base, 10)
    draw_pattern(b, base, 11)
    assert decode_frame_number(a) == 10 and decode_frame_number(b) == 11
    changed = np.any(a != b, axis=2)
    assert changed[CODE_HEIGHT:].mean() > 0.05  # the scrolling bars move, not just the code
    c = np.zeros_like(base)
    draw_pattern(c, base, 10)
    assert np.array_equal(a, c)  # deterministic: a reader can recompute what frame N must look like


def test_no_signal_frame() -> None:
    f = no_signal_frame(1024, 768)
    assert f.shape == (768, 1024, 4)
    colours = {tuple(c) for c in f[..., :3].reshape(-1, 3)[:: 97]}
    assert colours <= {BACKGROUND, FOREGROUND} and FOREGROUND in colours
    assert text_mask("NO SIGNAL").shape == (7, 9 * 6 - 1)
    tiny = no_signal_frame(20, 10)  # too small for the text: plain background
    assert (tiny[..., :3] == BACKGROUND).all()
