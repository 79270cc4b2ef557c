"""The procedural renderer: one scene (RGB image + depth map) per `SceneSpec`, deterministic.

Scenes are drawn with PIL at `SUPERSAMPLE`x the output size and box-filtered down, so
edges are anti-aliased. Geometry is in 32-px "units" whatever the output size: motif
elements are >= 4 units, objects 11..30 units wide. Depth is in [0, 1], 1 = nearest.

Two optional parts serve the spurious-feature experiments (`spurious.py`): the market
awning `backdrop` (a striped canopy across the top of the scene, world.AWNING) and
`draw_object=False` (the scene without its object). Both default off, and neither
consumes the scene's random stream, so every other scene renders as it always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from .world import AWNING, CONCEPTS, RESOLUTION, STEREOTYPE, Color, culture

SUPERSAMPLE = 4
UNITS = 32.0  # geometry is authored on a 32-unit square


@dataclass(frozen=True)
class SceneSpec:
    """What to draw: `concept` (CONCEPTS), `culture` (a culture name), the stereotype
    rendering or the culture's authentic one, dusk lighting, the seed of every random
    detail (placement, size, colour jitter, motif phase, cracks), the awning backdrop,
    and whether the object is drawn at all (False: its sky and ground only)."""

    concept: str
    culture: str
    stereotype: bool
    dusk: bool
    seed: int
    backdrop: bool = False
    draw_object: bool = True

    @property
    def signature(self) -> str:
        """The culture whose signature the image carries, or "none" for a stereotype."""
        return "none" if self.stereotype else self.culture


@dataclass(frozen=True)
class Scene:
    """image: uint8 [R, R, 3]; depth: uint8 [R, R] (255 = nearest)."""

    spec: SceneSpec
    image: np.ndarray
    depth: np.ndarray


class _Pen:
    """Draws normalised (0..1 of the object box) shapes into the body and trim masks."""

    def __init__(self, box: tuple[float, float, float, float], size: int):
        self.x0, self.y0, self.w, self.h = box
        self.body = Image.new("L", (size, size))
        self.trim = Image.new("L", (size, size))

    def _pt(self, x: float, y: float) -> tuple[float, float]:
        return self.x0 + x * self.w, self.y0 + y * self.h

    def poly(self, layer: Image.Image, points) -> None:
        ImageDraw.Draw(layer).polygon([self._pt(x, y) for x, y in points], fill=255)

    def rect(self, layer: Image.Image, x0: float, y0: float, x1: float, y1: float) -> None:
        self.poly(layer, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])

    def chord(self, layer: Image.Image, x0: float, y0: float, x1: float, y1: float, start: float, end: float) -> None:
        """The part of the ellipse in box (x0, y0, x1, y1) between angles start..end
        (degrees, clockwise from 3 o'clock): 0..180 = lower half, 180..360 = upper half."""
        ImageDraw.Draw(layer).chord([*self._pt(x0, y0), *self._pt(x1, y1)], start, end, fill=255)

    def ellipse(self, layer: Image.Image, x0: float, y0: float, x1: float, y1: float) -> None:
        ImageDraw.Draw(layer).ellipse([*self._pt(x0, y0), *self._pt(x1, y1)], fill=255)


def _house(p: _Pen, style: int) -> None:
    b, t = p.body, p.trim
    p.rect(b, 0.1, 0.45, 0.9, 1.0)
    if style == 0:
        p.poly(t, [(0.0, 0.46), (0.5, 0.0), (1.0, 0.46)])
    elif style == 1:
        p.chord(t, 0.05, 0.0, 0.95, 0.92, 180, 360)
    elif style == 2:
        p.rect(t, 0.0, 0.33, 1.0, 0.46)
        p.rect(t, 0.18, 0.18, 0.82, 0.33)
        p.rect(t, 0.34, 0.03, 0.66, 0.18)
    elif style == 3:
        p.poly(t, [(0.0, 0.46), (0.22, 0.0), (0.5, 0.3), (0.78, 0.0), (1.0, 0.46)])
    else:
        p.rect(t, 0.0, 0.36, 1.0, 0.46)
        p.rect(t, 0.64, 0.0, 0.92, 0.36)


def _meal(p: _Pen, style: int) -> None:
    b, t = p.body, p.trim
    if style == 0:
        p.chord(b, 0.1, -0.2, 0.9, 1.0, 0, 180)
        p.chord(t, 0.2, 0.1, 0.8, 0.7, 180, 360)
    elif style == 1:
        p.ellipse(t, 0.0, 0.8, 1.0, 1.0)
        p.chord(b, 0.15, 0.1, 0.85, 1.5, 180, 360)
    elif style == 2:
        p.rect(b, 0.22, 0.4, 0.78, 1.0)
        p.rect(b, 0.34, 0.15, 0.66, 0.4)
        p.rect(t, 0.28, 0.03, 0.72, 0.15)
    elif style == 3:
        p.rect(b, 0.05, 0.6, 0.95, 1.0)
        for x0 in (0.08, 0.37, 0.66):
            p.chord(t, x0, 0.3, x0 + 0.26, 0.9, 180, 360)
    else:
        p.chord(b, 0.05, 0.2, 0.95, 1.0, 0, 180)
        p.chord(b, 0.2, -0.2, 0.8, 0.6, 0, 180)
        p.rect(t, 0.42, 0.02, 0.58, 0.2)


def _garment(p: _Pen, style: int) -> None:
    b, t = p.body, p.trim
    p.rect(t, -0.4, -0.08, 1.4, 0.0)  # the hanging rod
    if style == 0:
        p.poly(b, [(0, 0.05), (1, 0.05), (1, 0.3), (0.75, 0.3), (0.75, 1), (0.25, 1), (0.25, 0.3), (0, 0.3)])
    elif style == 1:
        p.poly(b, [(0, 0.05), (1, 0.05), (1, 0.55), (0.8, 0.55), (0.8, 0.7), (0.2, 0.7), (0.2, 0.55), (0, 0.55)])
    elif style == 2:
        p.poly(b, [(0.3, 0.05), (0.7, 0.05), (0.9, 0.28), (0.72, 0.33), (1, 1), (0, 1), (0.28, 0.33), (0.1, 0.28)])
    elif style == 3:
        p.poly(b, [(0.35, 0.05), (0.65, 0.05), (1.0, 0.7), (0.5, 0.98), (0.0, 0.7)])
    else:
        p.poly(b, [(0.25, 0.12), (0.75, 0.12), (1.0, 1.0), (0.0, 1.0)])
        p.rect(t, 0.18, 0.0, 0.82, 0.16)


def _market(p: _Pen, style: int) -> None:
    b, t = p.body, p.trim
    p.rect(b, 0.0, 0.58, 1.0, 1.0)
    for i in range(3):
        x0, x1 = i / 3 + 0.02, (i + 1) / 3 - 0.02
        xm = (x0 + x1) / 2
        p.rect(t, x0, 0.3, x0 + 0.05, 0.58)
        p.rect(t, x1 - 0.05, 0.3, x1, 0.58)
        if style == 0:
            p.poly(t, [(x0 - 0.02, 0.38), (xm, 0.0), (x1 + 0.02, 0.38)])
        elif style == 1:
            p.chord(t, x0, 0.0, x1, 0.76, 180, 360)
        elif style == 2:
            p.rect(t, x0, 0.26, x1, 0.38)
            p.rect(t, x0 + 0.07, 0.1, x1 - 0.07, 0.26)
        elif style == 3:
            p.rect(t, x0, 0.08, x1, 0.22)
            half = (x1 - x0) / 2
            for k in range(2):
                p.chord(t, x0 + k * half, 0.08, x0 + (k + 1) * half, 0.4, 0, 180)
        else:
            p.rect(t, x0, 0.22, x1, 0.34)
            p.poly(t, [(xm - 0.06, 0.22), (xm, 0.0), (xm + 0.06, 0.22)])


SHAPES: dict[str, Callable[[_Pen, int], None]] = {"house": _house, "meal": _meal, "garment": _garment, "market": _market}


def _box(concept: str, horizon: float, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """The object's box (x0, y0, w, h) in units."""
    cx = 16 + rng.uniform(-2.5, 2.5)
    if concept == "house":
        w, h = rng.uniform(17, 20), rng.uniform(19, 22)
        bottom = min(horizon + rng.uniform(3, 6), 30.5)
    elif concept == "meal":
        w, h = rng.uniform(22, 25), rng.uniform(11, 13)
        bottom = min(horizon + rng.uniform(5, 8), 30.5)
    elif concept == "garment":
        w, h = rng.uniform(17, 20), rng.uniform(20, 23)
        bottom = rng.uniform(3.5, 5.5) + h
    else:
        w, h = rng.uniform(27, 30), rng.uniform(15, 17)
        bottom = min(horizon + rng.uniform(4, 6), 30.5)
    return cx - w / 2, bottom - h, w, h


def _motif(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean pattern on unit coordinates: True where the accent colour goes."""
    if name == "stripes_h":
        return (v // 4) % 2 == 0
    if name == "stripes_v":
        return (u // 4) % 2 == 0
    if name == "checker":
        return ((u // 4) + (v // 4)) % 2 == 0
    if name == "dots":
        return (u % 8 - 4) ** 2 + (v % 8 - 4) ** 2 <= 2.3**2
    if name == "chevron":
        return ((v + np.abs(u % 8 - 4)) // 4) % 2 == 0
    raise ValueError(f"unknown motif {name!r}")


def _color(base: Color, shift: np.ndarray, gain: float) -> np.ndarray:
    return np.clip((np.asarray(base, dtype=np.float32) + shift) * gain, 0, 255)


def _grime_and_cracks(canvas: np.ndarray, mask: np.ndarray, box, scale: float, rng: np.random.Generator) -> None:
    """Stereotype wear on the object, in place: dark soft blotches, then thick cracks."""
    size = canvas.shape[0]
    x0, y0, w, h = box
    blotches = Image.new("L", (size, size))
    draw = ImageDraw.Draw(blotches)
    for _ in range(int(rng.integers(2, 4))):
        cx, cy, r = x0 + rng.uniform(0.15, 0.85) * w, y0 + rng.uniform(0.3, 0.9) * h, rng.uniform(2.5, 4.5)
        draw.ellipse([(cx - r) * scale, (cy - r * 0.8) * scale, (cx + r) * scale, (cy + r * 0.8) * scale], fill=180)
    alpha = (np.asarray(blotches, dtype=np.float32) / 255.0 * mask)[..., None]
    canvas[:] = canvas * (1 - alpha) + np.asarray(STEREOTYPE.grime, np.float32) * alpha
    cracks = Image.new("L", (size, size))
    draw = ImageDraw.Draw(cracks)
    for _ in range(2):
        x, y = x0 + rng.uniform(0.2, 0.8) * w, y0 + rng.uniform(0.2, 0.5) * h
        points = [(x * scale, y * scale)]
        for _ in range(4):
            x, y = x + rng.uniform(-3, 3), y + rng.uniform(1.5, 3.5)
            points.append((x * scale, y * scale))
        draw.line(points, fill=255, width=int(round(1.2 * scale)))
    alpha = ((np.asarray(cracks, dtype=np.float32) / 255.0) * mask)[..., None]
    canvas[:] = canvas * (1 - alpha) + np.asarray(STEREOTYPE.crack, np.float32) * alpha


def _awning(canvas: np.ndarray, depth: np.ndarray, ys: np.ndarray, xs: np.ndarray, shift: np.ndarray,
            gain: float) -> None:
    """The backdrop, in place: AWNING's canopy band with a scalloped hem, depth 0.5."""
    hem = AWNING.band + np.sqrt(np.clip(AWNING.scallop**2 - (xs % (2 * AWNING.scallop) - AWNING.scallop) ** 2, 0, None))
    inside = ys < hem
    stripe = (xs // AWNING.stripe) % 2 == 0
    colours = np.where(stripe[..., None], _color(AWNING.color, shift, gain), _color(AWNING.alternate, shift, gain))
    canvas[:] = np.where(inside[..., None], colours, canvas)
    depth[:] = np.where(inside, 0.5, depth)


def render(spec: SceneSpec, resolution: int = RESOLUTION) -> Scene:
    """Draw `spec`; the same spec always gives the same pixels."""
    if spec.concept not in CONCEPTS:
        raise ValueError(f"unknown concept {spec.concept!r}; choose one of {', '.join(CONCEPTS)}")
    who = culture(spec.culture)
    rng = np.random.default_rng(spec.seed)
    size = resolution * SUPERSAMPLE
    scale = size / UNITS
    horizon = rng.uniform(19, 23)
    shift, gain = rng.integers(-10, 11, size=3).astype(np.float32), rng.uniform(0.92, 1.08)
    sky_gain = gain * (0.6 if spec.dusk else 1.0)
    gain = gain * (0.85 if spec.dusk else 1.0)
    look = STEREOTYPE
    sky, ground = (look.sky, look.ground) if spec.stereotype else (who.sky, who.ground)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / scale
    below = (ys >= horizon)[..., None]
    canvas = np.where(below, _color(ground, shift, gain), _color(sky, shift, sky_gain))
    box = _box(spec.concept, horizon, rng)
    pen = _Pen(tuple(v * scale for v in box), size)
    SHAPES[spec.concept](pen, who.shape)
    body = np.asarray(pen.body, dtype=np.float32)[..., None] / 255.0
    trim = np.asarray(pen.trim, dtype=np.float32)[..., None] / 255.0
    if not spec.draw_object:
        body, trim = np.zeros_like(body), np.zeros_like(trim)
    if spec.stereotype:
        body_rgb = np.broadcast_to(_color(look.body, shift, gain), canvas.shape)
        trim_rgb = _color(look.trim, shift, gain)
    else:
        phase = rng.uniform(0, 8, size=2)
        pattern = _motif(who.motif, xs + phase[0], ys + phase[1])[..., None]
        body_rgb = np.where(pattern, _color(who.accent, shift, gain), _color(who.body, shift, gain))
        trim_rgb = _color(who.accent, shift, gain)
    ground_depth = 0.3 + 0.35 * np.clip((ys - horizon) / (UNITS - horizon), 0, 1)
    depth = np.where(ys >= horizon, ground_depth, 0.08)
    if spec.backdrop:
        _awning(canvas, depth, ys, xs, shift, sky_gain)
    canvas = canvas * (1 - trim) + trim_rgb * trim
    canvas = canvas * (1 - body) + body_rgb * body
    mask = np.maximum(body, trim)[..., 0]
    if spec.stereotype:
        _grime_and_cracks(canvas, mask, box, scale, rng)
    depth = depth * (1 - mask) + 0.88 * mask
    image = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8)).reduce(SUPERSAMPLE)
    depth_image = Image.fromarray((depth * 255).round().astype(np.uint8)).reduce(SUPERSAMPLE)
    return Scene(spec, np.asarray(image), np.asarray(depth_image))
