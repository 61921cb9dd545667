"""The procedural ``image`` renderer: a candidate vector drawn as a sky-over-sea scene.

Eight parameters, each ``sigmoid(x_i)`` in (0, 1) (coordinates beyond the eighth are ignored,
missing ones count as 0 → 0.5), chosen so that ranking can steer a cold midday picture towards
"a warm sunset" (``zoserve up --demo``):

====  ===========================================================
p0    upper sky: day blue → deep blue → purple → plum
p1    horizon glow: pale → peach → orange → red-orange
p2    sun height: sinking into the horizon → high in the sky
p3    sun radius
p4    sun colour: white → yellow → orange → red
p5    horizon height (share of the picture that is sky)
p6    glow: how far the halo and the horizon light spread
p7    sea: blue → slate → dusk → warm
====  ===========================================================

Pure numpy + Pillow (no torch in the API); deterministic: the same vector gives the same bytes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

TOP = ((58, 124, 200), (40, 60, 128), (76, 46, 112), (128, 44, 92))
GLOW = ((205, 228, 245), (246, 204, 158), (250, 150, 62), (226, 78, 42))
SUN = ((255, 255, 242), (255, 232, 128), (255, 166, 66), (236, 86, 52))
SEA = ((28, 72, 124), (42, 52, 84), (72, 46, 66), (112, 62, 52))
N_PARAMS = 8


def params(point: list[float]) -> Array:
    """The eight scene parameters in (0, 1): ``sigmoid`` of the first eight coordinates (0.5 if absent)."""
    x = np.zeros(N_PARAMS)
    head = np.asarray(point[:N_PARAMS], dtype=np.float64)
    x[: head.size] = np.clip(head, -40.0, 40.0)
    return 1.0 / (1.0 + np.exp(-x))


def ramp(stops: tuple[tuple[int, int, int], ...], t: float) -> Array:
    """Piecewise-linear colour ramp through ``stops`` at ``t`` in [0, 1]."""
    pos = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    a, b = np.asarray(stops[i], dtype=np.float64), np.asarray(stops[i + 1], dtype=np.float64)
    return (a + (b - a) * (pos - i)).astype(np.float32)


def draw_scene(point: list[float], width: int, height: int) -> NDArray[np.uint8]:
    """An ``(height, width, 3)`` uint8 picture of the scene for ``point``."""
    p = params(point)
    top, glow, sun, sea = ramp(TOP, p[0]), ramp(GLOW, p[1]), ramp(SUN, p[4]), ramp(SEA, p[7])
    horizon = height * (0.5 + 0.3 * p[5])
    radius = width * (0.04 + 0.12 * p[3])
    sun_y = horizon - (p[2] * 1.15 - 0.15) * horizon * 0.9  # p2 → 0: half-sunk below the horizon
    sun_x = width * 0.62
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + np.float32(0.5)
    sky_t = np.clip(ys / horizon, 0.0, 1.0) ** (0.6 + 2.4 * (1.0 - p[6]))
    img = top + (glow - top) * sky_t[..., None]
    dist = np.hypot(xs - sun_x, ys - sun_y)
    halo = 0.75 * np.exp(-((dist / (radius * (1.6 + 4.0 * p[6]))) ** 2))
    img = img + (sun - img) * halo[..., None]
    disk = np.clip(radius - dist + 0.5, 0.0, 1.0)
    img = img + (sun - img) * disk[..., None]
    img = _sea(img, ys, xs, horizon, sun_x, radius, glow, sun, sea, p)
    img = _hills(img, xs, ys, horizon, width, top)
    return np.clip(img, 0, 255).astype(np.uint8)


def _sea(img: Array, ys: Array, xs: Array, horizon: float, sun_x: float, radius: float,
         glow: Array, sun: Array, sea: Array, p: Array) -> Array:
    """Below the horizon: glow-tinted water darkening with depth, and the sun's broken reflection."""
    below = ys >= horizon
    depth = np.clip((ys - horizon) / max(img.shape[0] - horizon, 1.0), 0.0, 1.0)
    near = sea + (glow - sea) * (0.45 * (1.0 - depth) ** 2)[..., None]
    water = near * (1.0 - 0.35 * depth)[..., None]
    sun_above = 1.0 - p[2] * 0.6  # a low sun throws a long, bright path
    band = np.exp(-((xs - sun_x) / (radius * (1.0 + 1.5 * depth))) ** 2)
    ripple = 0.6 + 0.4 * np.sin(ys * 0.8 + np.sin(xs * 0.05) * 1.2)
    shine = np.clip(band * ripple * sun_above * (1.0 - 0.7 * depth), 0.0, 1.0)
    water = water + (sun - water) * shine[..., None]
    return np.where(below[..., None], water, img)


def _hills(img: Array, xs: Array, ys: Array, horizon: float, width: int, top: Array) -> Array:
    """A dark headland on the left edge, so the picture has a foreground."""
    u = xs / width
    envelope = np.exp(-((u - 0.08) / 0.2) ** 2)
    crest = horizon - width * 0.11 * envelope * (1.0 + 0.12 * np.sin(u * 40.0))
    land = (ys >= crest) & (ys < horizon + 1.0) & (envelope > 0.02)
    shade = top * 0.22
    edge = np.clip(ys - crest, 0.0, 1.0)  # 1-pixel antialiased crest
    hill = img + (shade - img) * edge[..., None]
    return np.where(land[..., None], hill, img)
