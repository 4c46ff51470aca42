"""The embedded default data set: SIGNS-like pictures of a hand showing 0-5 raised fingers.

Drawn by this code, not downloaded: a palm, a wrist and five fingers, of which the first
`digit` (in the order signers raise them: index, middle, ring, little, thumb) are raised and
the rest folded, with a random position, size, rotation, skin tone, background and noise.
Deterministic per seed.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .data import Signs

CLASSES = [0, 1, 2, 3, 4, 5]
_RENDER = 128  # drawn at twice the output size, then downsampled for smooth edges
# Angles (degrees from straight up, clockwise) of index, middle, ring, little, thumb.
_FINGER_ANGLES = (-24.0, -7.0, 10.0, 27.0, -72.0)
_FINGER_LENGTH = (1.55, 1.7, 1.55, 1.25, 1.15)
_SKIN = np.array([[255, 219, 172], [241, 194, 125], [224, 172, 105], [198, 134, 66],
                  [141, 85, 36], [255, 205, 180]], dtype=np.float32)


def draw_hand(digit: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One picture (size x size x 3, uint8) of a hand raising `digit` fingers."""
    s = _RENDER
    # Background: a tinted wall with a gradient, as in photos taken against a wall.
    base = rng.uniform(90, 250, size=3)
    tilt = rng.uniform(-60, 60, size=3)
    ramp = np.linspace(-0.5, 0.5, s)[:, None, None]
    bg = np.clip(base + tilt * ramp + np.zeros((s, s, 3)), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(bg, "RGB")

    hand = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(hand)
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.85, 1.1)
    color = tuple(int(c) for c in np.clip(skin, 0, 255)) + (255,)
    shade = tuple(int(c * 0.8) for c in color[:3]) + (255,)
    r = s * rng.uniform(0.15, 0.19)          # palm radius
    cx, cy = s / 2, s / 2 + r * 0.6
    width = r * 0.38                          # finger width
    d.rectangle([cx - r * 0.75, cy, cx + r * 0.75, s + 10], fill=color)          # wrist
    d.ellipse([cx - r, cy - r * 1.05, cx + r, cy + r * 1.05], fill=color)       # palm
    raised = set(range(digit))
    for i, (angle, length) in enumerate(zip(_FINGER_ANGLES, _FINGER_LENGTH)):
        a = math.radians(angle + rng.uniform(-4, 4))
        root = (cx + math.sin(a) * r * 0.8, cy - math.cos(a) * r * 0.85)
        reach = r * (length * rng.uniform(1.0, 1.2) if i in raised else 0.3)
        tip = (root[0] + math.sin(a) * reach, root[1] - math.cos(a) * reach)
        d.line([root, tip], fill=color, width=int(width * (1.15 if i == 4 else 1.0)))
        d.ellipse([tip[0] - width / 2, tip[1] - width / 2, tip[0] + width / 2,
                   tip[1] + width / 2], fill=color)
        if i not in raised and i != 4:
            # A folded finger shows as a knuckle line across the palm.
            d.line([(root[0] - width / 2, root[1] + width * 0.4),
                    (root[0] + width / 2, root[1] + width * 0.4)], fill=shade, width=2)
    hand = hand.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR,
                       center=(cx, cy + r))
    scale = rng.uniform(0.9, 1.15)
    side = int(s * scale)
    hand = hand.resize((side, side), Image.Resampling.BILINEAR)
    dx = int(rng.uniform(-0.12, 0.12) * s) + (s - side) // 2
    dy = int(rng.uniform(-0.08, 0.12) * s) + (s - side) // 2
    canvas.paste(hand, (dx, dy), hand)

    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.8)))
    img = np.asarray(canvas.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    img = img * rng.uniform(0.75, 1.15) + rng.uniform(-20, 20)              # exposure
    img += rng.normal(0.0, rng.uniform(2, 6), size=img.shape)               # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8)


def synth_signs(n: int, seed: int = 0, size: int = 64) -> Signs:
    """`n` pictures with balanced labels 0-5, shuffled, deterministic per seed."""
    rng = np.random.default_rng(seed)
    y = np.resize(np.arange(len(CLASSES)), n)
    rng.shuffle(y)
    x = np.stack([draw_hand(int(digit), rng, size) for digit in y]) if n else \
        np.zeros((0, size, size, 3), np.uint8)
    return Signs(x=x, y=y.astype(np.int64), classes=list(CLASSES), source=f"synth(seed={seed})")


def synth_data(n_train: int = 1080, n_test: int = 120, seed: int = 0,
               size: int = 64) -> tuple[Signs, Signs]:
    """Train and test parts drawn from independent streams, so that they share no picture."""
    return synth_signs(n_train, seed * 2, size), synth_signs(n_test, seed * 2 + 1, size)


def write_synth_folder(out_dir, n: int, seed: int = 0, size: int = 64) -> int:
    """`n` pictures as JPEG files in one sub-folder per digit (the layout `--data FOLDER`
    reads), drawn and written one at a time: memory stays flat for any `n`."""
    from pathlib import Path

    out = Path(out_dir)
    for digit in CLASSES:
        (out / str(digit)).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        digit = CLASSES[i % len(CLASSES)]
        Image.fromarray(draw_hand(digit, rng, size)).save(
            out / str(digit) / f"synth-{seed}-{i:07d}.jpg", quality=90)
    return n
