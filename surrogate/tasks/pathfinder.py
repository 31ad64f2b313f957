"""LRA Pathfinder: are the two circles joined by one dashed contour? (Linsley et al. 2018, Tay et al. 2021)

An image holds two target contours, distractor contours and two circles (markers). A contour
is a chain of paddles (short line segments) with gaps between them: paddle k+1 starts
2 x margin after paddle k ends, turned from it by an angle whose probability falls with
cos(min(|turn| x continuity, 90 deg))^2 (turns of 90 / continuity degrees or more never
happen), and no paddle leaves the image (minus `padding`). Each paddle keeps a clear zone of
`margin` around its stroke, and zones of different paddles never overlap (the original's
mask test), so the centre lines of neighbouring contours stay at least 2 x margin + thickness
apart: wider than the 2 x margin gaps within a contour, which keeps contours apart from dashes.
As in the original generator:

- the two target contours start `seed_distance` apart, near the image centre (the first one
  at least 2 x seed_distance from every border), and grow one paddle each in turn to
  `contour_length` paddles; a pair that gets stuck is drawn again;
- the distractors (`num_distractors` contours of `distractor_length` paddles) are placed
  anywhere after them; one that gets stuck `max_contour_retrial` + 1 times is left out;
- one circle marks the start of a target contour; the other marks the end of the same
  contour (label 1) or of the other target contour (label 0), each with probability 1/2.
  Both target contours are always drawn, so the label is visible only by following them.

The renderer draws at `antialias` x the resolution and averages down (anti-aliasing);
contours have grey level min(1, snake_contrast x paddle_contrast x coverage), circles 1. The
image is flattened row by row to a sequence of grey levels 0..255, as LRA feeds it.

Image i of a split draws from its own random stream seeded by (seed, split, i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from common.errors import ConfigError

from .settings import PathfinderSettings

SEED_TRIES = 3  # placements tried for the first paddle of a contour (the original's paddle retrials + 1)
# Stored with every split's settings, so files of an older generator are refused, not mixed with new ones.
# 2: contours at least 2 x margin + thickness apart (revision 1 let them come within margin + thickness / 2,
# closer than the gaps between a contour's own paddles, so that following a contour was ambiguous).
GENERATOR_REVISION = 2


@dataclass
class Contour:
    """A contour's paddles as rows (y0, x0, y1, x1) in pixel units; (y0, x0) of row 0 is its start."""

    kind: str  # "target" or "distractor"
    paddles: list = field(default_factory=list)

    @property
    def start(self) -> tuple[float, float]:
        return tuple(self.paddles[0][:2])

    @property
    def end(self) -> tuple[float, float]:
        return tuple(self.paddles[-1][2:])


class _Stuck(Exception):
    """A contour that cannot grow (no free direction) or be seeded."""


class Canvas:
    """The occupancy of one image: per cell of the (antialias x) grid, how many paddles' clearance zones cover it."""

    def __init__(self, s: PathfinderSettings, margin: int):
        self.s, self.margin = s, margin
        self.scale = s.antialias
        self.cells = s.image_size * s.antialias
        self.count = np.zeros((self.cells, self.cells), dtype=np.int16)
        # the closest two paddles' centre lines may come, pixels: each keeps `margin` clear around its stroke
        self.radius = 2 * margin + s.paddle_thickness
        self.low, self.high = float(s.padding), float(s.image_size - s.padding)
        n_points = max(2, math.ceil(s.paddle_length * s.antialias * 2) + 1)
        self.along = np.linspace(0.0, 1.0, n_points)

    def _zone(self, paddle):
        """Grid cells within `radius` of a paddle: (row slice, column slice, boolean mask)."""
        y0, x0, y1, x1 = paddle
        a, r = self.scale, self.radius
        r0 = max(0, math.floor((min(y0, y1) - r) * a))
        r1 = min(self.cells, math.ceil((max(y0, y1) + r) * a) + 1)
        c0 = max(0, math.floor((min(x0, x1) - r) * a))
        c1 = min(self.cells, math.ceil((max(x0, x1) + r) * a) + 1)
        ys = (np.arange(r0, r1) + 0.5) / a
        xs = (np.arange(c0, c1) + 0.5) / a
        d = segment_distance(ys[:, None], xs[None, :], y0, x0, y1, x1)
        return slice(r0, r1), slice(c0, c1), d <= r

    def add(self, paddle) -> None:
        rows, cols, zone = self._zone(paddle)
        self.count[rows, cols] += zone

    def remove(self, paddle) -> None:
        rows, cols, zone = self._zone(paddle)
        self.count[rows, cols] -= zone

    def free(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Which candidate paddles (C, 2) -> (C, 2) lie inside the image and clear of every placed paddle."""
        inside = np.all((starts >= self.low) & (starts <= self.high) & (ends >= self.low) & (ends <= self.high), axis=1)
        points = starts[:, None, :] + (ends - starts)[:, None, :] * self.along[None, :, None]  # (C, K, 2)
        cells = np.clip((points * self.scale).astype(np.int64), 0, self.cells - 1)
        return inside & ~self.count[cells[..., 0], cells[..., 1]].any(axis=1)


def segment_distance(py, px, y0, x0, y1, x1):
    """Distance from points (py, px) to the segment (y0, x0)-(y1, x1), broadcast."""
    dy, dx = y1 - y0, x1 - x0
    length2 = dy * dy + dx * dx
    t = np.clip(((py - y0) * dy + (px - x0) * dx) / length2, 0.0, 1.0) if length2 > 0 else 0.0
    return np.hypot(py - (y0 + t * dy), px - (x0 + t * dx))


def _unit(angle):
    return np.stack([np.sin(angle), np.cos(angle)], axis=-1)  # (y, x)


class Grower:
    """Grows contours on a Canvas with one image's random stream.

    A contour's newest paddle is placed on the canvas only when the next one is (or the
    contour is complete), so a paddle may start within the margin of the one it continues.
    """

    def __init__(self, s: PathfinderSettings, canvas: Canvas, rng: np.random.Generator):
        self.s, self.canvas, self.rng = s, canvas, rng
        m, L = canvas.margin, s.paddle_length
        step = 1.0 / (L + m)  # one pixel of arc on the circle the next paddle's far end lies on
        turns = np.arange(-math.pi, math.pi, step)
        weights = np.cos(np.minimum(np.abs(turns) * s.continuity, math.pi / 2)) ** 2
        keep = weights > 1e-12
        self.turns, self.weights = turns[keep], weights[keep]

    def random_angle(self) -> float:
        return math.radians(int(self.rng.integers(-180, 180)))

    def contour(self, kind: str, n_paddles: int, tail_of) -> Contour:
        """A contour of n_paddles paddles whose first one starts at tail_of() (SEED_TRIES tries); _Stuck if it cannot grow.

        A contour that gets stuck leaves the canvas as it found it.
        """
        contour = Contour(kind)
        for _ in range(SEED_TRIES):
            tail = tail_of()
            head = tail + self.s.paddle_length * _unit(self.random_angle())
            if self.canvas.free(tail[None], head[None])[0]:
                contour.paddles.append((tail[0], tail[1], head[0], head[1]))
                break
        else:
            raise _Stuck
        try:
            for _ in range(n_paddles - 1):
                self._extend(contour)
        except _Stuck:
            for paddle in contour.paddles[:-1]:
                self.canvas.remove(paddle)
            raise
        self.canvas.add(contour.paddles[-1])
        return contour

    def _extend(self, contour: Contour) -> None:
        """Add one paddle, its turn drawn with the continuity weights among the free directions."""
        m, L = self.canvas.margin, self.s.paddle_length
        y0, x0, y1, x1 = contour.paddles[-1]
        angle = math.atan2(y1 - y0, x1 - x0)
        pivot = np.array([y1, x1]) + m * _unit(angle)
        directions = _unit(angle + self.turns)
        starts = pivot + m * directions
        ends = pivot + (L + m) * directions
        ok = self.canvas.free(starts, ends)
        if not ok.any():
            raise _Stuck
        cumulative = np.cumsum(np.where(ok, self.weights, 0.0))
        k = min(int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right")), len(ok) - 1)
        self.canvas.add(contour.paddles[-1])
        contour.paddles.append((starts[k, 0], starts[k, 1], ends[k, 0], ends[k, 1]))


# tries of the second target contour before the pair is drawn again; of the first before giving up
SECOND_TARGET_TRIES = 50
FIRST_TARGET_TRIES = 2_000


def _target_pair(s: PathfinderSettings, margin: int, rng: np.random.Generator) -> tuple[Grower, list[Contour]]:
    """Two target contours of contour_length paddles starting seed_distance apart, the first near the centre.

    The original grows the two in turns and draws both again when either gets stuck; here
    the first is grown (and drawn again) alone, then the second around it, which gives the
    same kind of pair at a fraction of the cost.
    """
    size, d = s.image_size, s.seed_distance
    low, high = 2 * d, size - 2 * d
    if high <= low:  # a small image: start near the centre
        low, high = size / 2 - 1, size / 2 + 1
    while True:
        grow = Grower(s, Canvas(s, margin), rng)
        for _ in range(FIRST_TARGET_TRIES):
            try:
                first = grow.contour("target", s.contour_length, lambda: rng.uniform(low, high, 2))
                break
            except _Stuck:
                continue
        else:
            raise ConfigError(f"pathfinder settings: no contour of {s.contour_length} paddles fitted into a "
                              f"{s.image_size} x {s.image_size} image in {FIRST_TARGET_TRIES} tries "
                              f"(margin {margin}); shorten contour_length or paddle_length")
        origin = np.array(first.start)
        for _ in range(SECOND_TARGET_TRIES):
            try:
                second = grow.contour("target", s.contour_length, lambda: origin + d * _unit(grow.random_angle()))
                return grow, [first, second]
            except _Stuck:
                continue


def _distractors(s: PathfinderSettings, grow: Grower, rng: np.random.Generator) -> list[Contour]:
    placed = []
    for _ in range(s.num_distractors):
        for _ in range(s.max_contour_retrial + 1):
            try:
                placed.append(grow.contour("distractor", s.distractor_length,
                                           lambda: rng.uniform(s.padding, s.image_size - s.padding, 2)))
                break
            except _Stuck:
                continue
    return placed


def render(s: PathfinderSettings, contours: list[Contour], markers: list[tuple[float, float]]) -> np.ndarray:
    """The image (size, size) uint8: paddles and circles drawn at antialias x resolution, averaged down."""
    a, size = s.antialias, s.image_size
    n = size * a
    fine = np.zeros((n, n), dtype=np.float32)
    half_width = max(s.paddle_thickness * a, 1.0) / 2  # at least one fine pixel wide
    level = s.snake_contrast * s.paddle_contrast
    for contour in contours:
        for y0, x0, y1, x1 in contour.paddles:
            Y0, X0, Y1, X1 = y0 * a, x0 * a, y1 * a, x1 * a
            r0, r1 = max(0, int(min(Y0, Y1) - half_width) - 1), min(n, int(max(Y0, Y1) + half_width) + 2)
            c0, c1 = max(0, int(min(X0, X1) - half_width) - 1), min(n, int(max(X0, X1) + half_width) + 2)
            ys, xs = np.arange(r0, r1) + 0.5, np.arange(c0, c1) + 0.5
            hit = segment_distance(ys[:, None], xs[None, :], Y0, X0, Y1, X1) <= half_width
            np.maximum(fine[r0:r1, c0:c1], np.where(hit, level, 0.0), out=fine[r0:r1, c0:c1])
    image = np.minimum(fine.reshape(size, a, size, a).mean(axis=(1, 3)), 1.0)
    circles = np.zeros((n, n), dtype=np.float32)
    centres = (np.arange(n) + 0.5) / a
    for y, x in markers:
        circles = np.maximum(circles, ((centres[:, None] - y) ** 2 + (centres[None, :] - x) ** 2
                                       <= s.marker_radius ** 2).astype(np.float32))
    image = np.maximum(image, circles.reshape(size, a, size, a).mean(axis=(1, 3)))
    return np.round(image * 255).astype(np.uint8)


def draw_image(s: PathfinderSettings, rng: np.random.Generator):
    """One image: (uint8 (size, size), label, details) with details = contours (targets first), markers, margin."""
    label = int(rng.integers(0, 2))
    margin = int(s.paddle_margin[int(rng.integers(0, len(s.paddle_margin)))])
    grow, targets = _target_pair(s, margin, rng)
    distractors = _distractors(s, grow, rng)
    origin = int(rng.integers(0, 2))
    other = origin if label == 1 else 1 - origin
    markers = [targets[origin].start, targets[other].end]
    contours = targets + distractors
    details = {"contours": contours, "markers": markers, "marked": (origin, other), "margin": margin}
    return render(s, contours, markers), label, details


def image_stream(seed: int, split_code: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, split_code, index])


class Generator:
    """Makes rows of one split: flattened images, lengths (all size x size) and labels."""

    def __init__(self, s: PathfinderSettings, split_code: int):
        self.s, self.split_code = s, split_code

    def make(self, start: int, stop: int):
        width = self.s.image_size ** 2
        inputs = np.zeros((stop - start, width), dtype=np.uint8)
        labels = np.zeros(stop - start, dtype=np.int16)
        for row, index in enumerate(range(start, stop)):
            image, labels[row], _ = draw_image(self.s, image_stream(self.s.seed, self.split_code, index))
            inputs[row] = image.reshape(-1)
        return inputs, np.full(stop - start, width, dtype=np.int32), labels
