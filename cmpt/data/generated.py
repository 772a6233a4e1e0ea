"""Procedurally generated image sets: dSprites-style sprites and CLEVR-style counting.

Both originals are themselves generated, so regenerating them is legitimate; what matters
is that labels mean the same thing as in VTAB:

``dsprites_loc`` / ``dsprites_ori``
    A white sprite (square, ellipse or heart) x 6 scales x 40 orientations x 32 x 32
    positions on a black 64 x 64 canvas, as in dSprites. VTAB's labels are the x position
    bucketed into 16 classes (``dsprites_loc``) and the orientation bucketed into 16 classes
    (``dsprites_ori``); we use the same bucketing of the same latent grid. As in the
    original, a square looks the same every 90 degrees and an ellipse every 180 degrees, so
    orientation classes are partly ambiguous by construction.
``clevr_count``
    3 to 10 flat coloured objects (circle, square or diamond; 8 CLEVR colours; 3 sizes) on a
    plain grey 64 x 64 background, label = count - 3 (8 classes, like VTAB's
    ``clevr_count_all``). Unlike CLEVR there is no 3-D rendering and no occlusion: objects
    never touch, so the count is exactly the number of connected blobs.

Image ``i`` of a task depends only on ``(task, i)`` (its own ``default_rng``), and the label
of image ``i`` is ``i % num_classes``, so asking for more images never changes earlier ones.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

__all__ = ["CANVAS", "CLEVR_BACKGROUND", "CLEVR_COLORS", "DSPRITES_SHAPES", "GENERATED_CLASSES",
           "render_generated", "sprite_mask"]

CANVAS = 64
# --- dSprites latent grid (Matthey et al. 2017) ------------------------------------------
DSPRITES_SHAPES = ("square", "ellipse", "heart")
DSPRITES_SCALES = tuple(float(s) for s in np.linspace(0.5, 1.0, 6))
N_ORIENTATIONS = 40  # angles k * 2pi / 40
N_POSITIONS = 32  # positions along x and along y
N_BINS = 16  # VTAB buckets x position / orientation into 16 classes
_HALF = 10.0  # sprite radius in pixels at scale 1
_MARGIN = 12.0  # sprite centres stay this far from the border, so sprites are never cut
# heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0: area centroid and farthest point from it, computed
# numerically once; shifting by the centroid makes every sprite's pixel centroid its position.
_HEART_CENTROID_Y = 0.2935
_HEART_RADIUS = 1.2935
# --- CLEVR-style counting -------------------------------------------------------------------
CLEVR_COUNTS = tuple(range(3, 11))
CLEVR_COLORS = {  # the 8 CLEVR colours (RGB)
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
CLEVR_BACKGROUND = (160, 160, 160)
_CLEVR_SHAPES = ("circle", "square", "diamond")
_CLEVR_RADII = (3, 4, 5)

GENERATED_CLASSES: dict[str, tuple[str, ...]] = {
    "dsprites_loc": tuple(f"x{b:02d}" for b in range(N_BINS)),
    "dsprites_ori": tuple(f"ori{b:02d}" for b in range(N_BINS)),
    "clevr_count": tuple(f"{n} objects" for n in CLEVR_COUNTS),
}


def _rng(task: str, index: int) -> np.random.Generator:
    # crc32 of the name, not hash(): Python salts str hashes per process
    return np.random.default_rng([zlib.crc32(task.encode()), int(index)])


def sprite_mask(shape: str, scale: float, angle: float, cx: float, cy: float, size: int = CANVAS) -> np.ndarray:
    """Boolean ``size x size`` mask of one sprite centred at pixel ``(cx, cy)`` (x right, y down)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = xs - cx, ys - cy
    c, s = math.cos(angle), math.sin(angle)
    u = (c * dx + s * dy) / (_HALF * scale)  # sprite frame, in units of its radius
    v = (-s * dx + c * dy) / (_HALF * scale)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.7
    if shape == "ellipse":
        return u**2 + (v / 0.5) ** 2 <= 1.0
    if shape == "heart":
        hx, hy = u * _HEART_RADIUS, -v * _HEART_RADIUS + _HEART_CENTROID_Y
        return (hx**2 + hy**2 - 1.0) ** 3 - hx**2 * hy**3 <= 0.0
    raise ValueError(f"unknown sprite shape {shape!r}; valid: {', '.join(DSPRITES_SHAPES)}")


def _position(k: int) -> float:
    return _MARGIN + k / (N_POSITIONS - 1) * (CANVAS - 1 - 2 * _MARGIN)


def _dsprite(task: str, index: int) -> tuple[np.ndarray, int, dict[str, float]]:
    rng = _rng(task, index)
    label = index % N_BINS
    shape = int(rng.integers(len(DSPRITES_SHAPES)))
    scale = DSPRITES_SCALES[int(rng.integers(len(DSPRITES_SCALES)))]
    if task == "dsprites_loc":  # two of the 32 x positions fall in each of the 16 bins
        pos_x = label * (N_POSITIONS // N_BINS) + int(rng.integers(N_POSITIONS // N_BINS))
        orient = int(rng.integers(N_ORIENTATIONS))
    else:  # orientation bins as VTAB: floor(k * 16 / 40)
        pos_x = int(rng.integers(N_POSITIONS))
        choices = [k for k in range(N_ORIENTATIONS) if k * N_BINS // N_ORIENTATIONS == label]
        orient = int(choices[int(rng.integers(len(choices)))])
    pos_y = int(rng.integers(N_POSITIONS))
    angle = 2 * math.pi * orient / N_ORIENTATIONS
    mask = sprite_mask(DSPRITES_SHAPES[shape], scale, angle, _position(pos_x), _position(pos_y))
    image = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=-1)
    latents = {"shape": shape, "scale": scale, "orientation": orient, "pos_x": pos_x, "pos_y": pos_y}
    return image, label, latents


def _object_mask(shape: str, r: int) -> np.ndarray:
    d = np.arange(-r, r + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    if shape == "circle":
        return dx**2 + dy**2 <= r * r
    if shape == "square":
        return np.ones_like(dx, dtype=bool)
    return np.abs(dx) + np.abs(dy) <= r


def _clevr(task: str, index: int) -> tuple[np.ndarray, int, dict[str, float]]:
    rng = _rng(task, index)
    label = index % len(CLEVR_COUNTS)
    count = CLEVR_COUNTS[label]
    image = np.empty((CANVAS, CANVAS, 3), np.uint8)
    image[:] = CLEVR_BACKGROUND
    placed: list[tuple[int, int, float]] = []  # centre and circumradius
    colors = list(CLEVR_COLORS.values())
    while len(placed) < count:
        shape = _CLEVR_SHAPES[int(rng.integers(len(_CLEVR_SHAPES)))]
        r = _CLEVR_RADII[int(rng.integers(len(_CLEVR_RADII)))]
        reach = r * math.sqrt(2) if shape == "square" else float(r)
        for _ in range(200):  # rejection sampling of a free spot
            cx, cy = (int(v) for v in rng.integers(r + 1, CANVAS - r - 1, size=2))
            # centres >= reach1 + reach2 + 2 apart: the nearest pixels of two objects are >= 2 px
            # apart, so they are never 4- or 8-adjacent and each object is its own blob
            if all(math.hypot(cx - x, cy - y) >= reach + q + 2 for x, y, q in placed):
                break
        else:  # crowded canvas: start again (deterministically, the rng moves on)
            image[:] = CLEVR_BACKGROUND
            placed.clear()
            continue
        window = image[cy - r:cy + r + 1, cx - r:cx + r + 1]
        window[_object_mask(shape, r)] = colors[int(rng.integers(len(colors)))]
        placed.append((cx, cy, reach))
    return image, label, {"count": count}


_RENDERERS = {"dsprites_loc": _dsprite, "dsprites_ori": _dsprite, "clevr_count": _clevr}


def render_generated(task: str, n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict[str, float]]]:
    """Images ``start..start+n-1`` of a generated task: uint8 ``[n, 64, 64, 3]``, int64 labels, latents."""
    if task not in _RENDERERS:
        raise ValueError(f"unknown generated task {task!r}; valid: {', '.join(_RENDERERS)}")
    images = np.empty((n, CANVAS, CANVAS, 3), np.uint8)
    labels = np.empty(n, np.int64)
    latents = []
    for i in range(n):
        images[i], labels[i], lat = _RENDERERS[task](task, start + i)
        latents.append(lat)
    return images, labels, latents
