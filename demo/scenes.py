"""Synthetic multi-class demo data: aerial scenes cut into tiles, with a class index per pixel.

    from demo.scenes import generate
    generate(Path("input/demo_multiclass"), 16, 4, width=480, height=320)  # 256 + 64 tiles, 18 MB, ~30 s on 2 cores

(At the cars demo's 1918 x 1280 the same counts take ~3.5 minutes on 2 busy cores and 185 MB: pass a smaller
--demo-width/--demo-height for this kind; the demo preset trains at 96 x 160 anyway.)

The sibling of ``demo.cars`` (the binary Carvana-like cars) for ``01_prepare.py --demo --demo-kind multiclass``.
Classes, in class order (index, name, overlay colour RGB), also written to ``classes.csv``:
0 background (fields, grass, dirt tracks, shadows on them), 1 road, 2 building, 3 tree, 4 water.

The scene model (units: one tile width; a scene is GRID_ROWS x GRID_COLS tiles, 4 x 4*H/W units):
- Farmland everywhere: a rotated patchwork of parcels (grass, green crops, ripe crops, bare soil), crop rows as
  stripes, some parcel edges as thin dirt tracks (background, not road).
- Water: a winding river across the scene and/or lakes with wavy shores; every scene has some.
- Roads: one or two main roads from edge to edge (dashed centre line), plus a town: a rotated grid of streets
  whose blocks are lined with houses. Roads cross rivers (bridges are road).
- Buildings: rotated rectangles along the streets and a few farmhouses by the main roads; gable roofs (a lit and a
  shaded half) or flat roofs with a rim; they cast shadows away from the sun.
- Trees: forests (blobs of overlapping crowns) and single trees in fields and along streets; each crown has a lit
  side, a shadow, and may overhang a road (then the pixel is tree, as seen from above).
- Per scene: the colours of each class (drawn from overlapping ranges: dark crops near trees, grey roofs near
  asphalt, greenish water), the sun direction, a colour cast, haze and smooth lighting waves; per tile: class
  textures, a slight blur and sensor noise; JPEG quality 90. Colour alone gets a pixel part of the way; the shapes
  (bands, rectangles, blobs, wavy regions) and textures (stripes, crowns) do the rest.

Layout written into ``root``: ``train/<id>.jpg`` with ``train_masks/<id>.png`` (8-bit single-channel, class
indices 0..C-1, no ``_mask`` suffix), ``test/<id>.jpg`` with ``test_masks/<id>.png`` (the truth Kaggle would keep),
``classes.csv`` (``name,r,g,b``, one row per class in class order) and ``sample_submission.csv`` (``img,rle_mask``,
one row per test image and class 1..C-1, id ``<image-id>_<class-name>``, placeholder ``1 1``).

Ids are ``scene<NNN>_<KK>``: the scene number (train scenes first, then test scenes; at least three digits) and
the tile 01..16 in row-major order. The tiles of a scene share its colours, light and the objects that cross tile
borders, so folds must keep a scene together: group regex ``^(scene\\d+)_\\d+$`` (Carvana's ``<car>_<view>`` rule
gives the same groups).

Deterministic: scene i draws its layout from ``np.random.default_rng([seed, i])`` and tile k (1..16) its textures
and noise from ``[seed, i, k]``, so files are byte-identical for a seed whatever the number of workers. The content
does not depend on the size either (everything is placed in tile-width units), only its resolution.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lib import files, parallel
from lib.errors import PipelineError


@dataclass(frozen=True)
class SceneClass:
    name: str
    rgb: tuple[int, int, int]  # overlay / colour-mask colour


CLASSES: tuple[SceneClass, ...] = (
    SceneClass("background", (0, 0, 0)), SceneClass("road", (128, 128, 128)),
    SceneClass("building", (220, 60, 40)), SceneClass("tree", (40, 170, 60)), SceneClass("water", (40, 100, 230)))
BACKGROUND, ROAD, BUILDING, TREE, WATER = range(len(CLASSES))
CLASSES_CSV = "classes.csv"
GROUP_REGEX = r"^(scene\d+)_\d+$"  # first capture group: the scene
GRID_ROWS, GRID_COLS = 4, 4  # tiles per scene: 16 as a car's views, so equal counts give equal image numbers
TILES = GRID_ROWS * GRID_COLS
IMAGE_EXT, MASK_EXT = ".jpg", ".png"
JPEG_QUALITY = 90
OCC_RES = 100  # placement raster: pixels per unit (tile width)
_SHIFT = 4  # cv2 sub-pixel bits

# Colour ranges (RGB): (centre, per-channel jitter). They overlap on purpose between classes.
GRASS = ((96, 122, 62), 12)
FIELD_TONES = (((70, 104, 46), 10), ((120, 142, 70), 12), ((188, 170, 104), 14), ((146, 116, 84), 12),
               ((104, 96, 74), 10))  # green crop (near trees), young crop, ripe crop, soil, dark soil (near roads)
TRACK = ((168, 150, 118), 10)
TREE_TONE = ((50, 84, 42), 10)
WATER_TONES = (((44, 72, 96), 10), ((52, 84, 72), 10), ((74, 86, 84), 10))  # blue, greenish, murky
ASPHALT = ((100, 100, 104), 16)
CONCRETE = ((152, 150, 144), 12)
ROOFS = (((172, 84, 62), 14), ((124, 124, 128), 14), ((70, 68, 72), 10), ((196, 190, 178), 12),
         ((128, 96, 74), 12), ((92, 116, 100), 10))  # terracotta, grey, dark, light, brown, green metal
# texture amplitude per class (fraction of the colour): fine grain, medium-scale blotches
FINE_TEXTURE = np.array([0.05, 0.04, 0.03, 0.10, 0.02], np.float32)
MEDIUM_TEXTURE = np.array([0.10, 0.04, 0.03, 0.16, 0.05], np.float32)
MEDIUM_SCALE = 0.012  # units, correlation length of the blotches
NOISE_SIGMA = 4.0  # grey levels of sensor noise, every pixel
SHADOW_DEPTH = 0.45  # shadows keep this much less light
HAZE = np.array([165, 172, 182], np.float32)  # what haze blends towards


# --- the scene (pure data, scene units) -------------------------------------------------------------
@dataclass(frozen=True)
class Style:
    """One scene's colours (RGB float) and light."""
    grass: np.ndarray  # (3,)
    tracks: np.ndarray  # (3,)
    tree: np.ndarray  # (3,)
    water: np.ndarray  # (3,)
    cast: np.ndarray  # (3,) per-channel gain (white balance)
    haze: float  # 0..0.2, blend towards HAZE
    sun: tuple[float, float]  # unit vector towards the sun, scene (x right, y down)
    shadow_length: float  # shadow length per unit of height
    waves: np.ndarray  # (K, 4) lighting waves: kx, ky, phase, amplitude; gain 1 + sum(a sin(k.p + phase))


Building = tuple[np.ndarray, np.ndarray, int, float]  # (4, 2) corners, roof tone, 0 flat / 1 gable, height


@dataclass(frozen=True)
class Scene:
    """What a scene holds, in scene units (x right 0..extent[0], y down 0..extent[1])."""
    extent: tuple[float, float]
    style: Style
    parcels: list[np.ndarray]  # (4, 2) corners each
    parcel_tone: np.ndarray  # (P, 3)
    parcel_rows: np.ndarray  # (P, 3): stripe angle (rad), period (units), amplitude (0: no rows)
    tracks: list[tuple[np.ndarray, float]]  # (N, 2) polyline, width
    lakes: list[np.ndarray]  # (N, 2) closed shores
    rivers: list[tuple[np.ndarray, float]]  # (N, 2) polyline, width
    roads: list[tuple[np.ndarray, float, np.ndarray, bool]]  # polyline, width, tone (3,), dashed centre line
    buildings: list[Building]
    tree_xy: np.ndarray  # (T, 2) crown centres
    tree_r: np.ndarray  # (T,) crown radii
    tree_tone: np.ndarray  # (T, 3)


def _jitter(rng: np.random.Generator, tone: tuple) -> np.ndarray:
    centre, spread = tone
    return np.clip(np.array(centre, np.float64) + rng.normal(0, spread / 2, 3) + rng.normal(0, spread / 2), 0, 255)


def _style(rng: np.random.Generator) -> Style:
    angle = rng.uniform(0, 2 * np.pi)
    waves = np.column_stack([rng.normal(0, 1.2, (3, 2)), rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.02, 0.07, 3)])
    return Style(grass=_jitter(rng, GRASS), tracks=_jitter(rng, TRACK), tree=_jitter(rng, TREE_TONE),
                 water=_jitter(rng, WATER_TONES[rng.integers(len(WATER_TONES))]),
                 cast=rng.uniform(0.9, 1.1, 3), haze=float(rng.uniform(0, 0.2)),
                 sun=(float(np.cos(angle)), float(np.sin(angle))), shadow_length=float(rng.uniform(0.5, 1.2)),
                 waves=waves)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _rect(centre: np.ndarray, size: tuple[float, float], angle: float) -> np.ndarray:
    """(4, 2) corners of a rectangle of size (along, across) rotated by angle around centre."""
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * np.array(size) / 2
    return centre + half @ _rotation(angle).T


def _meander(rng: np.random.Generator, extent: tuple[float, float], wiggle: float,
             through: np.ndarray | None = None, angle: float | None = None) -> np.ndarray:
    """(N, 2) points of a path across the whole scene: a line through a point (random in the middle of the scene
    unless given) at an angle (random unless given), bent sideways by two sine waves of up to ``wiggle`` units."""
    ex, ey = extent
    if through is None:
        through = np.array([rng.uniform(0.3, 0.7) * ex, rng.uniform(0.3, 0.7) * ey])
    angle = rng.uniform(0, np.pi) if angle is None else angle
    along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    reach = np.hypot(ex, ey)
    t = np.arange(-reach, reach + 0.04, 0.04)
    offset = np.zeros_like(t)
    for _ in range(2):
        offset += rng.uniform(0, wiggle / 2) * np.sin(2 * np.pi * t / rng.uniform(0.8, 2.5) + rng.uniform(0, 2 * np.pi))
    offset -= np.interp(0.0, t, offset)  # still through the point
    return through + t[:, None] * along + offset[:, None] * across


class _Occupancy:
    """A coarse class raster of the scene (OCC_RES pixels per unit) for placing objects without overlaps."""

    def __init__(self, extent: tuple[float, float]):
        self.grid = np.zeros((math.ceil(extent[1] * OCC_RES), math.ceil(extent[0] * OCC_RES)), np.uint8)

    def _px(self, points: np.ndarray) -> np.ndarray:
        return np.round(points * OCC_RES * (1 << _SHIFT)).astype(np.int32)

    def polygon(self, points: np.ndarray, value: int) -> None:
        cv2.fillPoly(self.grid, [self._px(points)], value, cv2.LINE_8, _SHIFT)

    def line(self, points: np.ndarray, width: float, value: int) -> None:
        cv2.polylines(self.grid, [self._px(points)], False, value, max(1, round(width * OCC_RES)), cv2.LINE_8, _SHIFT)

    def free(self, points: np.ndarray, margin: float = 0.0, blocked: tuple[int, ...] | None = None,
             inside: bool = True) -> bool:
        """Whether a polygon lies on nothing but background (or nothing of the ``blocked`` classes), and (if inside)
        within the scene; margin (units) grows it, or shrinks it when negative (so that neighbours may touch)."""
        pad = abs(round(margin * OCC_RES)) + 1
        x0, y0 = np.floor(points.min(0) * OCC_RES).astype(int) - pad
        x1, y1 = np.ceil(points.max(0) * OCC_RES).astype(int) + pad + 1
        if inside and (x0 < 0 or y0 < 0 or x1 > self.grid.shape[1] or y1 > self.grid.shape[0]):
            return False
        probe = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(probe, [self._px(points - np.array([x0, y0]) / OCC_RES)], 1, cv2.LINE_8, _SHIFT)
        if (k := 2 * abs(round(margin * OCC_RES)) + 1) > 1:
            probe = (cv2.dilate if margin > 0 else cv2.erode)(probe, np.ones((k, k), np.uint8))
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x1, self.grid.shape[1]), min(y1, self.grid.shape[0])
        if cx1 <= cx0 or cy1 <= cy0:
            return True
        window = probe[cy0 - y0: cy1 - y0, cx0 - x0: cx1 - x0].astype(bool)
        under = self.grid[cy0:cy1, cx0:cx1][window]
        return not (under.any() if blocked is None else np.isin(under, blocked).any())

    def at(self, xy: np.ndarray) -> np.ndarray:
        """(N,) class under each (N, 2) point (background outside the scene)."""
        ij = np.floor(xy * OCC_RES).astype(int)
        ok = (ij[:, 0] >= 0) & (ij[:, 1] >= 0) & (ij[:, 0] < self.grid.shape[1]) & (ij[:, 1] < self.grid.shape[0])
        out = np.zeros(len(xy), np.uint8)
        out[ok] = self.grid[ij[ok, 1], ij[ok, 0]]
        return out


def _parcels(rng: np.random.Generator, extent: tuple[float, float], style: Style
             ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[tuple[np.ndarray, float]]]:
    """Farmland: a rotated grid of parcels covering the scene, their tones and crop rows, and dirt tracks."""
    angle = rng.uniform(0, np.pi)
    rot = _rotation(angle)
    centre = np.array(extent) / 2
    reach = np.hypot(*extent) / 2 + 0.1
    tones = [_jitter(rng, FIELD_TONES[i]) for i in rng.choice(len(FIELD_TONES), 3, replace=False)]
    parcels, tone, rows, tracks = [], [], [], []
    v = -reach
    while v < reach:
        depth = rng.uniform(0.35, 0.9)
        u = -reach
        while u < reach:
            length = rng.uniform(0.4, 1.3)
            corners = np.array([[u, v], [u + length, v], [u + length, v + depth], [u, v + depth]]) @ rot.T + centre
            parcels.append(corners)
            if rng.random() < 0.3:
                tone.append(style.grass * rng.uniform(0.92, 1.08))
                rows.append((0.0, 1.0, 0.0))
            else:
                tone.append(tones[rng.integers(len(tones))] * rng.uniform(0.92, 1.08))
                row_angle = angle + (np.pi / 2 if rng.random() < 0.5 else 0.0)
                rows.append((row_angle, rng.uniform(0.012, 0.03), rng.uniform(0.04, 0.12)))
            if rng.random() < 0.25:
                tracks.append((corners[[0, 3]], rng.uniform(0.008, 0.014)))
            u += length
        if rng.random() < 0.3:
            tracks.append((np.array([[-reach, v], [reach, v]]) @ rot.T + centre, rng.uniform(0.008, 0.014)))
        v += depth
    return parcels, np.array(tone), np.array(rows), tracks


def _water(rng: np.random.Generator, extent: tuple[float, float], occ: _Occupancy
           ) -> tuple[list[np.ndarray], list[tuple[np.ndarray, float]]]:
    """A river (two scenes in three) and lakes (one or two without a river, else maybe one): never no water."""
    lakes, rivers = [], []
    if rng.random() < 2 / 3:
        path = _meander(rng, extent, 0.5)
        width = rng.uniform(0.12, 0.25)
        rivers.append((path, width))
        occ.line(path, width, WATER)
    for _ in range(int(rng.integers(0, 2) if rivers else rng.integers(1, 3))):
        centre = np.array([rng.uniform(0.15, 0.85) * extent[0], rng.uniform(0.15, 0.85) * extent[1]])
        theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        radius = rng.uniform(0.3, 0.6) * (1 + sum(rng.uniform(0, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                                                    for k in (2, 3, 5)))
        stretch = rng.uniform(0.6, 1.0)
        shore = centre + np.column_stack([radius * np.cos(theta), stretch * radius * np.sin(theta)]) @ _rotation(
            rng.uniform(0, np.pi)).T
        lakes.append(shore)
        occ.polygon(shore, WATER)
    return lakes, rivers


def _building(rng: np.random.Generator, occ: _Occupancy, corners: np.ndarray, roofs: list, gable_p: float,
              height: tuple[float, float]) -> Building | None:
    """A building on these corners if the place is free (then marked taken), else None."""
    if not occ.free(corners, margin=-0.01):  # may touch a neighbour or the street
        return None
    occ.polygon(corners, BUILDING)
    return corners, _jitter(rng, roofs[rng.integers(len(roofs))]), int(rng.random() < gable_p), float(
        rng.uniform(*height))


def _town(rng: np.random.Generator, centre: np.ndarray, blocks: tuple[int, int], roofs: list, street_tone: np.ndarray,
          occ: _Occupancy) -> tuple[list, list[Building], list[np.ndarray]]:
    """A rotated grid of streets around centre with houses along each block's sides, facing the street, and
    maybe a bigger building inside: (streets, buildings, free street-side spots for trees)."""
    angle = rng.uniform(0, np.pi)
    rot = _rotation(angle)
    block, street_w = rng.uniform(0.32, 0.45), rng.uniform(0.03, 0.042)
    half = np.array(blocks) * block / 2
    streets = []
    for k in range(blocks[0] + 1):
        u = -half[0] + k * block
        streets.append((np.array([[u, -half[1] - 0.1], [u, half[1] + 0.1]]) @ rot.T + centre, street_w, street_tone,
                        False))
    for k in range(blocks[1] + 1):
        v = -half[1] + k * block
        streets.append((np.array([[-half[0] - 0.1, v], [half[0] + 0.1, v]]) @ rot.T + centre, street_w, street_tone,
                        False))
    for path, width, _, _ in streets:
        occ.line(path, width, ROAD)
    buildings, spots = [], []
    sides = [((1, 0), (0, 1), (0, 0)), ((0, 1), (-1, 0), (1, 0)), ((-1, 0), (0, -1), (1, 1)), ((0, -1), (1, 0), (0, 1))]
    for bu in range(blocks[0]):
        for bv in range(blocks[1]):
            lo = np.array([-half[0] + bu * block, -half[1] + bv * block])
            for side, (along, inward, corner) in enumerate(sides):
                along, inward, corner = np.array(along, float), np.array(inward, float), lo + block * np.array(corner)
                t = street_w / 2 + rng.uniform(0.01, 0.03)
                while t < block - 0.08:
                    size = (rng.uniform(0.06, 0.12), rng.uniform(0.055, 0.095))
                    setback = street_w / 2 + rng.uniform(0.012, 0.03)
                    local = corner + along * (t + size[0] / 2) + inward * (setback + size[1] / 2)
                    house = None
                    if rng.random() < 0.9:
                        house = _building(rng, occ, _rect(local @ rot.T + centre, size, angle + side * np.pi / 2),
                                          roofs, 0.7, (0.02, 0.05))
                    if house is not None:
                        buildings.append(house)
                    elif rng.random() < 0.5:
                        spots.append(local @ rot.T + centre)
                    t += size[0] + rng.uniform(0.012, 0.04)
            if rng.random() < 0.6:  # a barn, hall or block of flats inside the block
                size = (rng.uniform(0.1, 0.2), rng.uniform(0.07, 0.14))
                corners = _rect((lo + block / 2 + rng.normal(0, 0.02, 2)) @ rot.T + centre, size,
                                angle + rng.integers(2) * np.pi / 2)
                if (hall := _building(rng, occ, corners, roofs, 0.3, (0.04, 0.08))) is not None:
                    buildings.append(hall)
    return streets, buildings, spots


def _roads_and_buildings(rng: np.random.Generator, extent: tuple[float, float], occ: _Occupancy
                         ) -> tuple[list, list[Building], list[np.ndarray]]:
    """One or two main roads, a town they go through (and maybe a hamlet), farmhouses by the main roads:
    (roads: polyline, width, tone, dashed; buildings; street-side tree spots)."""
    ex, ey = extent
    towns = [np.array([rng.uniform(0.3, 0.7) * ex, rng.uniform(0.3, 0.7) * ey])]
    if rng.random() < 0.6:  # a hamlet, away from the town
        hamlet = np.array([rng.uniform(0.1, 0.9) * ex, rng.uniform(0.1, 0.9) * ey])
        if np.linalg.norm(hamlet - towns[0]) > 1.3:
            towns.append(hamlet)
    asphalt = _jitter(rng, ASPHALT)
    roads = []
    first = rng.uniform(0, np.pi)
    for i in range(int(rng.integers(1, 3))):
        path = _meander(rng, extent, 0.25, through=towns[i] if i < len(towns) else None,
                        angle=first + i * rng.uniform(np.pi / 4, 3 * np.pi / 4))
        roads.append((path, rng.uniform(0.045, 0.065), asphalt * rng.uniform(0.95, 1.05), True))
    for path, width, _, _ in roads:
        occ.line(path, width, ROAD)
    main = list(roads)
    roofs = [ROOFS[i] for i in rng.choice(len(ROOFS), 3, replace=False)]
    buildings, spots = [], []
    for k, centre in enumerate(towns):
        street_tone = _jitter(rng, CONCRETE) if rng.random() < 0.4 else asphalt * rng.uniform(0.95, 1.1)
        blocks = (int(rng.integers(3, 6)), int(rng.integers(2, 5))) if k == 0 else (int(rng.integers(1, 3)), 2)
        streets, houses, free = _town(rng, centre, blocks, roofs, street_tone, occ)
        roads += streets
        buildings += houses
        spots += free
    for path, width, _, _ in main:  # farmhouses
        for _ in range(int(rng.integers(6, 14))):
            i = int(rng.integers(1, len(path)))
            direction = path[i] - path[i - 1]
            normal = np.array([-direction[1], direction[0]]) / np.linalg.norm(direction)
            size = (rng.uniform(0.08, 0.2), rng.uniform(0.06, 0.12))
            centre = path[i] + normal * rng.choice([-1, 1]) * (width / 2 + size[1] / 2 + rng.uniform(0.02, 0.08))
            corners = _rect(centre, size, math.atan2(direction[1], direction[0]))
            if (farm := _building(rng, occ, corners, roofs, 0.5, (0.03, 0.07))) is not None:
                buildings.append(farm)
    return roads, buildings, spots


def _trees(rng: np.random.Generator, extent: tuple[float, float], style: Style, occ: _Occupancy,
           street_spots: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forests (blobs filled with crowns), single trees in the fields and along streets: centres, radii, tones."""
    xy, r = [], []
    theta = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    circle = np.column_stack([np.cos(theta), np.sin(theta)])
    for _ in range(int(rng.integers(2, 5))):
        for _ in range(10):  # somewhere not in a town (its outline may cross roads and water)
            centre = np.array([rng.uniform(0, 1) * extent[0], rng.uniform(0, 1) * extent[1]])
            size = rng.uniform(0.3, 0.75)
            if occ.free(centre + circle * size * 1.3, blocked=(BUILDING,), inside=False):
                break
        else:
            continue
        theta_phase = rng.uniform(0, 2 * np.pi, 3)
        spacing = rng.uniform(0.022, 0.032)
        g = np.arange(-size * 1.5, size * 1.5, spacing)
        gx, gy = np.meshgrid(g, g * 0.87)
        gx = gx + (np.arange(len(g))[:, None] % 2) * spacing / 2
        pts = np.column_stack([gx.ravel(), gy.ravel()]) + rng.normal(0, spacing * 0.25, (gx.size, 2))
        theta = np.arctan2(pts[:, 1], pts[:, 0])
        edge = size * (1 + 0.25 * np.cos(2 * theta + theta_phase[0]) + 0.15 * np.cos(3 * theta + theta_phase[1]))
        keep = np.hypot(*pts.T) < edge
        xy.append(pts[keep] + centre)
        r.append(rng.uniform(0.6, 0.85, keep.sum()) * spacing)
    n_single = int(rng.integers(25, 70))
    xy.append(rng.uniform(0, 1, (n_single, 2)) * extent)
    r.append(rng.uniform(0.012, 0.026, n_single))
    for spot in street_spots:
        xy.append(spot[None])
        r.append(np.array([rng.uniform(0.014, 0.024)]))
    xy_all, r_all = np.concatenate(xy), np.concatenate(r)
    under = occ.at(xy_all)
    keep = (under == BACKGROUND) | ((under == ROAD) & (rng.random(len(xy_all)) < 0.05))
    xy_all, r_all = xy_all[keep], r_all[keep]
    tones = np.clip(style.tree * rng.uniform(0.85, 1.15, (len(xy_all), 1)) + rng.normal(0, 4, (len(xy_all), 3)), 0, 255)
    return xy_all, r_all, tones


def scene_spec(rng: np.random.Generator, aspect: float) -> Scene:
    """Draw a scene of GRID_ROWS x GRID_COLS tiles of 1 x aspect units (aspect = height / width)."""
    extent = (float(GRID_COLS), GRID_ROWS * aspect)
    style = _style(rng)
    parcels, parcel_tone, parcel_rows, tracks = _parcels(rng, extent, style)
    occ = _Occupancy(extent)
    lakes, rivers = _water(rng, extent, occ)
    roads, buildings, spots = _roads_and_buildings(rng, extent, occ)
    tree_xy, tree_r, tree_tone = _trees(rng, extent, style, occ, spots)
    return Scene(extent, style, parcels, parcel_tone, parcel_rows, tracks, lakes, rivers, roads, buildings,
                 tree_xy, tree_r, tree_tone)


# --- rendering a tile ---------------------------------------------------------------------------------
def _noise(rng: np.random.Generator, height: int, width: int, scale_px: float) -> np.ndarray:
    """(H, W) float32 smooth noise of unit spread and correlation length scale_px (white noise when <= 1)."""
    if scale_px <= 1:
        return rng.standard_normal((height, width), np.float32)
    small = rng.standard_normal((max(2, math.ceil(height / scale_px) + 1), max(2, math.ceil(width / scale_px) + 1)),
                                np.float32)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return big / max(float(big.std()), 1e-6)


class _Canvas:
    """Scene units -> the pixels of one tile (origin: its top-left corner, ``scale`` pixels per unit).

    cv2 fills every pixel an outline touches (a polygon comes out about a pixel wider and taller, a line of
    thickness t 2 * (t // 2) + 1 pixels wide), so outlines are drawn half a pixel inside and line widths rounded
    to the nearest odd pixel count: areas then do not grow as the size shrinks."""

    def __init__(self, origin: tuple[float, float], scale: float, height: int, width: int):
        self.origin, self.scale, self.shape = np.array(origin), scale, (height, width)

    def px(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) scene points -> (N, 2) int32 fixed-point pixel coordinates (pixel centres at integers)."""
        return np.round(((points - self.origin) * self.scale - 0.5) * (1 << _SHIFT)).astype(np.int32)

    def polygons(self, target: np.ndarray, polys: list[np.ndarray], value, inset: bool = True) -> None:
        """Fill polygons ((N, 2) scene points each); inset: draw their outline half a pixel inwards."""
        if inset:
            polys = [_inset(p, 0.5 / self.scale) for p in polys]
        cv2.fillPoly(target, [self.px(p) for p in polys], value, cv2.LINE_8, _SHIFT)

    def line(self, target: np.ndarray, points: np.ndarray, width: float, value) -> None:
        """A polyline of width units: the nearest odd number of pixels cv2 can draw."""
        thickness = max(1, 2 * round((width * self.scale - 1) / 2))
        cv2.polylines(target, [self.px(points)], False, value, thickness, cv2.LINE_8, _SHIFT)

    def circles(self, target: np.ndarray, xy: np.ndarray, r: np.ndarray, values: np.ndarray) -> None:
        """Discs at (N, 2) centres of (N,) radii (units), values (N, channels)."""
        radii = np.round(np.maximum(r * self.scale - 0.5, 0.5) * (1 << _SHIFT)).astype(int)
        for (cx, cy), rad, v in zip(self.px(xy), radii, values):
            cv2.circle(target, (int(cx), int(cy)), int(rad), tuple(map(float, v)), -1, cv2.LINE_8, _SHIFT)

    def visible(self, xy: np.ndarray, margin: float) -> np.ndarray:
        """(N,) whether points lie within margin units of the tile."""
        lo = self.origin - margin
        hi = self.origin + np.array(self.shape[::-1]) / self.scale + margin
        return np.all((xy >= lo) & (xy <= hi), axis=1)


def _inset(poly: np.ndarray, d: float) -> np.ndarray:
    """(N, 2) polygon with every edge moved d inwards (d small against its edges)."""
    edges = np.roll(poly, -1, 0) - poly
    normals = np.column_stack([edges[:, 1], -edges[:, 0]]) / np.maximum(np.linalg.norm(edges, axis=1), 1e-12)[:, None]
    area = float(np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1]))
    normals *= -1 if area > 0 else 1  # inwards whichever the winding
    before, after = np.roll(normals, 1, 0), normals  # the edges meeting at each vertex
    bisector = (before + after) / np.maximum(1 + np.sum(before * after, axis=1), 0.2)[:, None]
    return poly + d * bisector


def _paint(img: np.ndarray, label: np.ndarray, mask: np.ndarray, colour: np.ndarray, cls: int) -> None:
    """Where mask: img (H, W, 3) takes colour (H, W, 3) and label (H, W) takes cls."""
    cv2.copyTo(colour, mask, img)
    np.putmask(label, mask, cls)


def _shadows(scene: Scene, buildings: list[Building], canvas: _Canvas) -> np.ndarray:
    """(H, W) float32 0..1: where the buildings given and the tree crowns shade the ground."""
    shade = np.zeros(canvas.shape, np.uint8)
    away = -np.array(scene.style.sun) * scene.style.shadow_length
    for corners, _, _, height in buildings:
        hull = cv2.convexHull(np.concatenate([corners, corners + away * height]).astype(np.float32))[:, 0]
        canvas.polygons(shade, [hull.astype(np.float64)], 1)
    seen = canvas.visible(scene.tree_xy, 0.1)
    offset = away * scene.tree_r[seen, None] * 1.5
    canvas.circles(shade, scene.tree_xy[seen] + offset, scene.tree_r[seen], np.ones((seen.sum(), 1)))
    k = max(1, round(0.004 * canvas.scale)) * 2 + 1
    return cv2.GaussianBlur(shade.astype(np.float32), (k, k), 0)


def render_tile(scene: Scene, row: int, col: int, width: int, height: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Tile (row, col) of ``scene`` at width x height: (image (H, W, 3) uint8 RGB, label (H, W) uint8 in 0..C-1).

    The label is exact (no anti-aliasing); the image adds class textures, shadows, light, blur and noise (rng)."""
    if not (0 <= row < GRID_ROWS and 0 <= col < GRID_COLS):
        raise ValueError(f"tile ({row}, {col}) outside the {GRID_ROWS}x{GRID_COLS} grid")
    style, scale = scene.style, float(width)
    canvas = _Canvas((col * 1.0, row * height / width), scale, height, width)
    ys = (canvas.origin[1] + (np.arange(height)[:, None] + 0.5) / scale).astype(np.float32)  # (H, 1) pixel centres
    xs = (canvas.origin[0] + (np.arange(width)[None, :] + 0.5) / scale).astype(np.float32)  # (1, W)
    # farmland: parcel index map -> tone and crop rows
    pid, img = np.zeros((height, width), np.int32), np.zeros((height, width, 3), np.float32)
    for i, (corners, tone) in enumerate(zip(scene.parcels, scene.parcel_tone)):
        canvas.polygons(pid, [corners], i, inset=False)  # parcels tile the ground
        canvas.polygons(img, [corners], tuple(map(float, tone)), inset=False)
    angle, period, amp = scene.parcel_rows.T
    kx, ky = (2 * np.pi * np.stack([np.cos(angle), np.sin(angle)]) / period).astype(np.float32)  # (P,) each
    rows = 1 + amp.astype(np.float32)[pid] * np.sin(xs * kx[pid] + ys * ky[pid])
    img *= rows[..., None]
    label = np.zeros((height, width), np.uint8)
    for path, w in scene.tracks:
        canvas.line(img, path, w, tuple(map(float, style.tracks)))
    # water, roads, shadows, buildings, trees: painted in this order (later wins, in the image and the label)
    layer, mask = np.empty_like(img), np.zeros((height, width), np.uint8)
    canvas.polygons(mask, scene.lakes, 1)
    for path, w in scene.rivers:
        canvas.line(mask, path, w, 1)
    layer[:] = style.water.astype(np.float32)
    _paint(img, label, mask, layer, WATER)
    mask[:] = 0
    for path, w, tone, dashed in scene.roads:
        canvas.line(mask, path, w, 1)
        canvas.line(layer, path, w, tuple(map(float, tone)))
    for path, w, tone, dashed in scene.roads:
        if dashed:
            _dashes(canvas, layer, path, w)
    _paint(img, label, mask, layer, ROAD)
    near = [b for b, seen in zip(scene.buildings, canvas.visible(np.array([b[0].mean(0) for b in scene.buildings])
                                                                   .reshape(-1, 2), 0.3)) if seen]
    img *= (1 - SHADOW_DEPTH * _shadows(scene, near, canvas))[..., None]
    mask[:] = 0
    for corners, tone, gable, _ in near:
        _roof(canvas, layer, mask, corners, tone, gable, style.sun)
    _paint(img, label, mask, layer, BUILDING)
    mask[:] = 0
    seen = canvas.visible(scene.tree_xy, 0.05)
    xy, r, tone = scene.tree_xy[seen], scene.tree_r[seen], scene.tree_tone[seen]
    canvas.circles(mask, xy, r, np.ones((len(xy), 1)))
    canvas.circles(layer, xy, r, tone * 0.85)
    canvas.circles(layer, xy + np.array(style.sun) * r[:, None] * 0.3, r * 0.6, np.clip(tone * 1.2, 0, 255))
    _paint(img, label, mask, layer, TREE)
    # textures, light, haze, blur, noise
    tex = FINE_TEXTURE[label] * _noise(rng, height, width, 0.0015 * scale)
    tex += MEDIUM_TEXTURE[label] * _noise(rng, height, width, MEDIUM_SCALE * scale)
    gain = cv2.resize(_light(style, canvas, 16), (width, height), interpolation=cv2.INTER_LINEAR)
    tex += 1
    tex *= gain
    img *= tex[..., None]
    img *= (style.cast * (1 - style.haze)).astype(np.float32)
    img += style.haze * HAZE
    sigma = max(0.5, 0.0008 * scale)
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += (NOISE_SIGMA * rng.standard_normal((height, width), np.float32) + 0.5)[..., None]  # luminance noise
    return np.clip(img, 0, 255, out=img).astype(np.uint8), label


def _light(style: Style, canvas: _Canvas, step: int) -> np.ndarray:
    """(h, w) float32 gain of the scene's lighting waves, 1 + sum(a sin(kx x + ky y + phase)), on every step-th
    pixel of the tile (they change slowly; resize it to the tile)."""
    h, w = (math.ceil(n / step) + 1 for n in canvas.shape)
    ys = canvas.origin[1] + np.linspace(0, canvas.shape[0], h)[:, None] / canvas.scale
    xs = canvas.origin[0] + np.linspace(0, canvas.shape[1], w)[None, :] / canvas.scale
    gain = np.ones((h, w))
    for kx, ky, phase, a in style.waves:
        gain += a * np.sin(kx * xs + ky * ys + phase)
    return gain.astype(np.float32)


def _dashes(canvas: _Canvas, layer: np.ndarray, path: np.ndarray, width: float) -> None:
    """A dashed white centre line along a polyline (dash 0.05, gap 0.05 units)."""
    for a, b in zip(path[:-1], path[1:]):
        n = max(1, int(np.linalg.norm(b - a) / 0.1))
        for k in range(n):
            p, q = a + (b - a) * k / n, a + (b - a) * (k + 0.5) / n
            canvas.line(layer, np.array([p, q]), width * 0.12, (205.0, 205.0, 200.0))


def _roof(canvas: _Canvas, layer: np.ndarray, mask: np.ndarray, corners: np.ndarray, tone: np.ndarray, gable: int,
          sun: tuple[float, float]) -> None:
    """A gable roof (two halves split along the long side, the one facing the sun lit) or a flat one with a rim."""
    canvas.polygons(mask, [corners], 1)
    if gable:
        mid_a, mid_b = (corners[0] + corners[3]) / 2, (corners[1] + corners[2]) / 2
        halves = (np.array([corners[0], corners[1], mid_b, mid_a]), np.array([mid_a, mid_b, corners[2], corners[3]]))
        for half in halves:
            facing = float((half.mean(0) - corners.mean(0)) @ np.array(sun))
            canvas.polygons(layer, [half], tuple(map(float, np.clip(tone * (1.15 if facing > 0 else 0.78), 0, 255))))
    else:
        canvas.polygons(layer, [corners], tuple(map(float, np.clip(tone * 1.12, 0, 255))))
        inner = corners.mean(0) + (corners - corners.mean(0)) * 0.8
        canvas.polygons(layer, [inner], tuple(map(float, tone)))


# --- files --------------------------------------------------------------------------------------------
def tile_ids(scene_number: int, digits: int = 3) -> list[str]:
    """The ids of a scene's tiles in row-major order: scene007_01 ... scene007_16."""
    return [f"scene{scene_number:0{digits}d}_{k:02d}" for k in range(1, TILES + 1)]


def classes_csv() -> str:
    """classes.csv: header name,r,g,b and one row per class in class order."""
    return "".join(f"{line}\n" for line in ["name,r,g,b", *(f"{c.name},{c.rgb[0]},{c.rgb[1]},{c.rgb[2]}"
                                                           for c in CLASSES)])


def submission_rows(test_ids: list[str]) -> list[str]:
    """Per-class sample submission ids: each image (sorted) x class 1..C-1 in class order: <id>_<class-name>."""
    return [f"{image_id}_{c.name}" for image_id in sorted(test_ids) for c in CLASSES[1:]]


def encode_label_png(label: np.ndarray) -> bytes:
    """(H, W) uint8 class indices -> 8-bit single-channel PNG bytes."""
    ok, png = cv2.imencode(".png", np.ascontiguousarray(label, np.uint8))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


def encode_jpeg(image_rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes (quality JPEG_QUALITY)."""
    ok, jpg = cv2.imencode(".jpg", np.ascontiguousarray(image_rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return jpg.tobytes()


@dataclass(frozen=True)
class _Job:
    root: Path
    images: str  # folder names
    masks: str
    scene_number: int
    digits: int
    seed: int
    width: int
    height: int


def _render_scene(job: _Job) -> list[str]:
    """Draw one scene and write its tiles' JPEGs and label PNGs; return their ids."""
    scene = scene_spec(np.random.default_rng([job.seed, job.scene_number]), job.height / job.width)
    ids = tile_ids(job.scene_number, job.digits)
    for k, image_id in enumerate(ids):
        rng = np.random.default_rng([job.seed, job.scene_number, k + 1])
        img, label = render_tile(scene, k // GRID_COLS, k % GRID_COLS, job.width, job.height, rng)
        files.write_bytes_atomic(job.root / job.images / f"{image_id}{IMAGE_EXT}", encode_jpeg(img))
        files.write_bytes_atomic(job.root / job.masks / f"{image_id}{MASK_EXT}", encode_label_png(label))
    return ids


def _check_folders(root: Path, expected: dict[str, set[str]]) -> None:
    """Refuse folders holding files this generation would not write; drop temp files it left when interrupted."""
    for folder_name, names in expected.items():
        folder = root / folder_name
        if not folder.is_dir():
            continue
        for tmp in folder.glob(".*.tmp*"):  # files.atomic_path's temporary names
            if tmp.name[1:].rsplit(".tmp", 1)[0] in names:
                tmp.unlink()
        stray = sorted(p.name for p in folder.iterdir() if p.name not in names)
        if stray:
            raise PipelineError(f"{folder}: holds {len(stray)} files this generation would not write (e.g. "
                                f"{stray[0]}: another seed, size or kind?); empty the folder or use another one")


def generate(root: Path, n_train_scenes: int = 16, n_test_scenes: int = 4, width: int = 1918, height: int = 1280,
             seed: int = 0, workers: int = 2) -> dict:
    """Write the synthetic multi-class dataset into ``root`` (see the module docstring); return a summary.

    Files are written atomically; a folder holding files of another generation is a PipelineError; regenerating
    with the same arguments overwrites in place with the same bytes.
    """
    if n_train_scenes < 1 or n_test_scenes < 0 or width < 64 or height < 64:
        raise ValueError(f"need n_train_scenes >= 1, n_test_scenes >= 0, size >= 64x64; got {n_train_scenes}, "
                         f"{n_test_scenes}, {width}x{height}")
    start = time.perf_counter()
    root = Path(root)
    n = n_train_scenes + n_test_scenes
    digits = max(3, len(str(n - 1)))
    splits = [(files.TRAIN, files.TRAIN_MASKS, range(n_train_scenes)),
              (files.TEST, files.TEST_MASKS, range(n_train_scenes, n))]
    expected = {}
    for images, masks, numbers in splits:
        ids = [i for s in numbers for i in tile_ids(s, digits)]
        expected[images] = {f"{i}{IMAGE_EXT}" for i in ids}
        expected[masks] = {f"{i}{MASK_EXT}" for i in ids}
    _check_folders(root, expected)
    jobs = [_Job(root, images, masks, s, digits, seed, width, height) for images, masks, numbers in splits
            for s in numbers]
    with parallel.ordered(_render_scene, jobs, workers if len(jobs) > 1 else 0) as results:
        ids = list(results)
    test_ids = [i for scene_ids in ids[n_train_scenes:] for i in scene_ids]
    files.write_text_atomic(root / CLASSES_CSV, classes_csv())
    files.write_text_atomic(root / files.SAMPLE_SUBMISSION, "".join(
        f"{line}\n" for line in ["img,rle_mask", *(f"{row},1 1" for row in submission_rows(test_ids))]))
    return {"root": str(root), "train_scenes": n_train_scenes, "test_scenes": n_test_scenes,
            "train_images": n_train_scenes * TILES, "test_images": n_test_scenes * TILES, "classes": len(CLASSES),
            "width": width, "height": height, "seed": seed, "seconds": round(time.perf_counter() - start, 2)}
