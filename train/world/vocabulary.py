"""What the world is made of: shapes, colours, sizes, motions, backgrounds and their geometry.

Colours are saturated and far apart in RGB and in hue so they survive x264 chroma subsampling and
a resize to 64 px; backgrounds use muted, desaturated palettes so an object's colour is never
confused with the texture behind it (at 'hard' the textures get stronger).
"""

from __future__ import annotations

import math


SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 195, 60),
    "blue": (40, 85, 240),
    "yellow": (245, 215, 30),
    "white": (245, 245, 245),
    "purple": (165, 45, 215),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZES: tuple[str, ...] = ("small", "large", "varying")  # 'varying': the object grows or shrinks
MOTIONS: tuple[str, ...] = (
    "left", "right", "up", "down", "grow", "shrink", "rotate", "blink", "appear", "disappear",
)
TRANSLATIONS: tuple[str, ...] = ("left", "right", "up", "down")
RESIZES: tuple[str, ...] = ("grow", "shrink")
#: Generic motion words a short caption may use instead of an exact motion.
GENERIC_MOTIONS: dict[str, tuple[str, ...]] = {"move": TRANSLATIONS, "resize": RESIZES}
BACKGROUNDS: tuple[str, ...] = ("striped", "checkered", "gradient", "noisy", "dotted")

# Muted two-colour palettes per background kind (each kind keeps its own look, so "striped"
# is a recurring visual pattern, not just a word).
BG_PALETTES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "striped": ((70, 74, 86), (122, 126, 138)),
    "checkered": ((92, 72, 54), (142, 118, 90)),
    "gradient": ((34, 40, 62), (92, 120, 112)),
    "noisy": ((64, 70, 52), (132, 136, 112)),
    "dotted": ((46, 46, 50), (150, 150, 150)),
}

# Shape radii are in units of the object's nominal radius r; chosen so all shapes have a
# similar visible area (a star with circumradius 1 would look much smaller than a circle).
SIZE_RADIUS = {"small": 0.09, "large": 0.16}  # fraction of min(W, H), before object_scale
TRANSLATE_DISTANCE = 0.40  # fraction of min(W, H) travelled by a 'moves left/right/up/down'
ROTATE_TOTAL = math.pi  # radians turned during one 'rotates' event
BLINK_HALF_PERIOD = 3  # frames on, then frames off: visible with ~12 frames sampled from 32

