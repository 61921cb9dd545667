"""Candidate renderers for the ranking form: a point → a PNG, drawn with Pillow in the API process.

``objective.render`` picks one of:

* ``palette`` — coordinates in triples, each ``sigmoid`` → one RGB swatch (up to 12 swatches);
* ``curve`` — the coordinates as a polyline, squashed by ``tanh(x/2)`` so that candidates share
  one scale (a per-candidate autoscale would hide their differences);
* ``image`` — the procedural sky-and-sea scene of :mod:`service.web.scene`;
* ``vector`` — a bar plot of ``tanh(x/2)`` (long vectors are averaged into 64 bins). The default.

Every renderer is a pure function of the point, so a candidate's PNG can be cached forever
(the route sends ``Cache-Control: immutable`` and an ETag of the point).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from .scene import draw_scene

WIDTH, HEIGHT = 384, 288
SS = 2  # supersampling factor for line drawings (Pillow's lines are not antialiased)
BG, GRID, INK, POS, NEG = (250, 250, 247), (214, 216, 222), (24, 58, 120), (38, 96, 178), (204, 92, 24)
RENDERERS = ("palette", "curve", "image", "vector")
MAX_BINS = 64
CACHE_SIZE = 256  # PNGs kept in memory (~10-50 kB each): a form round asks for each one once or twice
_cache: OrderedDict[str, bytes] = OrderedDict()
_lock = threading.Lock()


def pick_renderer(render: str | None) -> str:
    """The renderer for ``objective.render`` (None or unknown → ``vector``)."""
    return render if render in RENDERERS else "vector"


def etag(render: str, point: list[float]) -> str:
    """A strong ETag for (renderer, point): the PNG is a pure function of both."""
    body = json.dumps([render, WIDTH, HEIGHT, point], separators=(",", ":")).encode()
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def render_png(render: str, point: list[float]) -> bytes:
    """PNG bytes of ``point`` drawn by ``render`` (one of :data:`RENDERERS`)."""
    image = DRAW[pick_renderer(render)](point)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def cached_png(render: str, point: list[float], tag: str) -> bytes:
    """:func:`render_png` behind a small LRU keyed by the ETag (callable from worker threads)."""
    with _lock:
        if tag in _cache:
            _cache.move_to_end(tag)
            return _cache[tag]
    png = render_png(render, point)
    with _lock:
        _cache[tag] = png
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return png


def squash(point: list[float]) -> np.ndarray:
    """``tanh(x/2)`` of the point, averaged into at most :data:`MAX_BINS` bins."""
    x = np.asarray(point, dtype=np.float64)
    if x.size > MAX_BINS:
        edges = np.linspace(0, x.size, MAX_BINS + 1).astype(int)
        x = np.add.reduceat(x, edges[:-1]) / np.diff(edges)
    return np.tanh(x / 2.0)


def draw_image(point: list[float]) -> Image.Image:
    return Image.fromarray(draw_scene(point, WIDTH, HEIGHT), "RGB")


def draw_palette(point: list[float]) -> Image.Image:
    x = np.asarray(point[: 3 * 12], dtype=np.float64)
    x = np.concatenate([x, np.zeros(-x.size % 3)])
    rgb = (255.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))).reshape(-1, 3).round().astype(int)
    img = Image.new("RGB", (WIDTH * SS, HEIGHT * SS), BG)
    d = ImageDraw.Draw(img)
    n, pad = len(rgb), 10 * SS
    w = (WIDTH * SS - pad * (n + 1)) / n
    for i, c in enumerate(rgb):
        x0 = pad + i * (w + pad)
        d.rounded_rectangle((x0, pad * 2, x0 + w, HEIGHT * SS - pad * 2), radius=8 * SS, fill=tuple(c),
                            outline=GRID, width=SS)
    return img.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)


def _axes(d: ImageDraw.ImageDraw, top: float, bottom: float) -> None:
    mid = (top + bottom) / 2
    for y in (top, mid, bottom):
        d.line((12 * SS, y, (WIDTH - 12) * SS, y), fill=GRID, width=SS * (2 if y == mid else 1))


def draw_curve(point: list[float]) -> Image.Image:
    y = squash(point)
    img = Image.new("RGB", (WIDTH * SS, HEIGHT * SS), BG)
    d = ImageDraw.Draw(img)
    top, bottom, left, right = 24 * SS, (HEIGHT - 24) * SS, 20 * SS, (WIDTH - 20) * SS
    _axes(d, top, bottom)
    xs = np.linspace(left, right, max(y.size, 2)) if y.size > 1 else np.array([(left + right) / 2])
    ys = (bottom + top) / 2 - y * (bottom - top) / 2
    pts = list(zip(xs.tolist(), ys.tolist()))
    if len(pts) > 1:
        d.line(pts, fill=INK, width=5 * SS, joint="curve")
    if y.size <= 32:
        r = 5 * SS
        for px, py in pts:
            d.ellipse((px - r, py - r, px + r, py + r), fill=INK)
    return img.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)


def draw_vector(point: list[float]) -> Image.Image:
    y = squash(point)
    img = Image.new("RGB", (WIDTH * SS, HEIGHT * SS), BG)
    d = ImageDraw.Draw(img)
    top, bottom, left, right = 24 * SS, (HEIGHT - 24) * SS, 20 * SS, (WIDTH - 20) * SS
    _axes(d, top, bottom)
    mid, half = (top + bottom) / 2, (bottom - top) / 2
    slot = (right - left) / max(y.size, 1)
    gap = min(slot * 0.2, 6 * SS)
    for i, v in enumerate(y.tolist()):
        x0 = left + i * slot + gap / 2
        y1 = mid - v * half
        d.rectangle((x0, min(mid, y1), x0 + slot - gap, max(mid, y1)), fill=POS if v >= 0 else NEG)
    return img.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)


DRAW: dict[str, Callable[[list[float]], Image.Image]] = {
    "palette": draw_palette, "curve": draw_curve, "image": draw_image, "vector": draw_vector,
}
