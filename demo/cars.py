"""Synthetic demo data in exactly the Kaggle Carvana layout (the real images cannot be shipped).

    from demo.cars import generate
    generate(Path("input"))  # 16 train + 4 test cars x 16 views, 1918 x 1280, 16-20 s on 2 cores

The scene model (units: metres, car frame x forward, y to the car's left, z up, origin on the
ground under the car's centre):
- A car is a few convex solids: the lower body (a side profile with rounded ends, extruded across
  the width), the cabin (a trapezoid profile whose sides lean inwards), two mirrors and four
  cylindrical wheels. ``car_spec`` draws their dimensions per car, for four body types.
- A rotating studio: the car stands on a turntable (slightly off its axis) that turns by
  22.5 degrees between views, so view 01 is the front, 05 a side, 09 the back and 13 the other
  side, for every car. A fixed perspective camera looks down at it from about 12 degrees; each car
  is framed with its own shift and zoom, each view with a small jitter.
- The image: a white wall with grey lettering, a grey floor with the turntable's rim, a blurred
  shadow and a faint mirror image of the car on the floor (neither is in the mask), then the car's
  visible faces with flat Lambert shading plus sky reflections, windows, lights, plates, door gaps
  and wheels, anti-aliased; Gaussian noise; JPEG quality 90.
- The mask: the exact union of the solids' projected silhouettes (convex hulls), no anti-aliasing.
Every fourth car (car 0, 4, ...) is painted white or silver, close to the wall and floor, so colour
thresholding fails and a model has to learn shapes.

Deterministic: car i draws from ``np.random.default_rng([seed, i])`` and view v of it from
``[seed, i, v]``, so files are byte-identical for a seed whatever the number of workers.
"""
from __future__ import annotations

import functools
import io
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lib import files, parallel
from lib.errors import PipelineError
from lib.rle import encode

N_VIEWS = 16
VIEW_STEP_DEG = 360.0 / N_VIEWS
JPEG_QUALITY = 90
CAM_DISTANCE = 12.0  # m, camera to turntable axis
CAM_ELEVATION_DEG = 12.0  # camera looks down this much at the aim point
CAM_AIM_Z = 0.75  # m, height of the point the camera aims at
FOCAL_PER_WIDTH = 1.92  # focal length in pixels / image width
AIM_ROW = 0.5  # image row of the aim point / image height
HORIZON_ROW = 0.42  # wall/floor boundary / image height
TURNTABLE_RADIUS = 4.2  # m
FRAME_MARGIN = (0.09, 0.12)  # largest framing shift, fraction of (width, height)
NOSE, TAIL = (0.3, 0.16), (0.2, 0.1)  # m, (x, z) size of the cut-off top corners of the body's ends
NOISE_SIGMA = 2.5  # grey levels
SHADOW_DOWNSCALE = 8  # the floor shadow is blurred at 1/8 resolution
LIGHT = np.array([0.3, -0.7, 1.0]) / np.linalg.norm([0.3, -0.7, 1.0])  # towards the studio lights, world
SKY = np.array([238.0, 238.0, 238.0])  # BGR of what glossy paint reflects
TYRE, GLASS = (28.0, 28.0, 30.0), np.array([40.0, 34.0, 30.0])
MASK_PALETTE = [0, 0, 0, 255, 255, 255]  # like the real masks: index 0 black, 1 white
# (name, BGR, weight). White and silver are also what every fourth car gets.
PAINTS = [("white", (236, 238, 238), 12), ("silver", (192, 194, 196), 10), ("black", (24, 22, 22), 20),
          ("grey", (110, 107, 105), 15), ("red", (24, 22, 160), 10), ("blue", (120, 55, 30), 10),
          ("navy", (60, 30, 20), 5), ("green", (50, 80, 40), 4), ("beige", (145, 175, 190), 4),
          ("brown", (40, 60, 90), 3), ("yellow", (30, 180, 220), 2), ("orange", (30, 100, 210), 2)]
NEAR_BACKGROUND_PAINTS = [(236, 238, 238), (226, 226, 222), (196, 196, 194), (210, 210, 208)]
RIMS = [(178, 176, 175), (72, 70, 70), (140, 138, 135)]
BODY_TYPES = ("sedan", "hatchback", "suv", "coupe")
_COMMON = dict(width=(1.72, 1.88), clearance=(0.12, 0.17), windscreen_run=(0.7, 0.95), wheel_radius=(0.3, 0.35))
BODY_RANGES = {  # per body type, the uniform range of each dimension in metres (hood: a fraction of the length)
    "sedan": dict(_COMMON, length=(4.5, 5.1), belt=(0.95, 1.05), cabin_height=(0.42, 0.5), hood_fraction=(0.26, 0.31),
                  deck=(0.85, 1.1), deck_drop=(0.02, 0.06), rear_run=(0.5, 0.8)),
    "hatchback": dict(_COMMON, length=(3.9, 4.4), belt=(0.95, 1.05), cabin_height=(0.48, 0.56),
                      hood_fraction=(0.2, 0.24), deck=(0.26, 0.32), deck_drop=(0.0, 0.03), rear_run=(0.2, 0.35)),
    "suv": dict(_COMMON, length=(4.4, 5.2), width=(1.85, 2.0), clearance=(0.2, 0.26), belt=(1.1, 1.25),
                cabin_height=(0.55, 0.68), hood_fraction=(0.26, 0.31), deck=(0.26, 0.32), deck_drop=(0.0, 0.03),
                windscreen_run=(0.45, 0.65), rear_run=(0.05, 0.15), wheel_radius=(0.36, 0.4)),
    "coupe": dict(_COMMON, length=(4.3, 4.8), belt=(0.9, 0.98), cabin_height=(0.36, 0.42), hood_fraction=(0.26, 0.31),
                  deck=(0.62, 0.78), deck_drop=(0.02, 0.06), rear_run=(0.8, 1.0)),
}
MAKES = ("Aurora", "Borealis", "Cobalt", "Dynamo", "Equinox", "Fjord", "Granite", "Helios")
MODELS = {"sedan": ("Meridian", "Solstice", "Vantage"), "hatchback": ("Pico", "Sprite", "Zest"),
          "suv": ("Ridge", "Summit", "Trek"), "coupe": ("Arc", "Comet", "Flare")}
TRIMS1, TRIMS2 = ("Base", "LX", "EX", "Sport", "Limited"), ("", "AWD", "Hybrid", "2.0T")


@dataclass(frozen=True)
class CarSpec:
    """One car's shape (metres) and paint, and how it is framed."""
    body_type: str  # one of BODY_TYPES
    length: float  # bumper to bumper
    width: float  # body width; mirrors stick out 0.16 beyond
    clearance: float  # ground to the underside
    belt: float  # height of the body top at the windscreen base
    hood_drop: float  # the body top is this much lower at the front bumper
    deck_drop: float  # ... and at the rear bumper
    roof: float  # roof height above the ground
    hood: float  # front bumper to windscreen base
    deck: float  # rear bumper to rear-window base
    windscreen_run: float  # horizontal run of the windscreen
    rear_run: float  # horizontal run of the rear window
    wheel_radius: float
    front_overhang: float  # front bumper to front axle
    wheelbase: float
    paint: tuple[float, float, float]  # BGR
    roof_paint: tuple[float, float, float]
    rim: tuple[float, float, float]
    gloss: float  # 0..1, how much sky the paint reflects
    offset: tuple[float, float]  # car centre from the turntable axis (car frame x, y)
    shift: tuple[float, float]  # framing: image shift, fraction of (width, height)
    zoom: float  # framing: focal length factor


def car_spec(rng: np.random.Generator, near_background: bool = False) -> CarSpec:
    """Draw a car: body type, dimensions, paint (white/silver when near_background) and framing."""
    kind = BODY_TYPES[rng.choice(len(BODY_TYPES), p=[0.4, 0.25, 0.25, 0.1])]
    d = {name: rng.uniform(lo, hi) for name, (lo, hi) in BODY_RANGES[kind].items()}
    if near_background:
        paint = np.array(NEAR_BACKGROUND_PAINTS[rng.integers(len(NEAR_BACKGROUND_PAINTS))], float)
    else:
        weights = np.array([w for _, _, w in PAINTS], float)
        paint = np.array(PAINTS[rng.choice(len(PAINTS), p=weights / weights.sum())][1], float)
    paint = np.clip(paint + rng.normal(0, 4, 3), 0, 255)
    length, belt = d.pop("length"), d.pop("belt")
    return CarSpec(
        body_type=kind, length=length, belt=belt, roof=belt + d.pop("cabin_height"),
        hood=length * d.pop("hood_fraction"), front_overhang=length * rng.uniform(0.18, 0.21),
        wheelbase=length * rng.uniform(0.58, 0.62), hood_drop=rng.uniform(0.08, 0.18),
        paint=tuple(paint), roof_paint=(30.0, 28.0, 28.0) if rng.random() < 0.1 else tuple(paint),
        rim=RIMS[rng.integers(len(RIMS))], gloss=rng.uniform(0.6, 1.0), offset=tuple(rng.normal(0, 0.15, 2)),
        shift=(float(np.clip(rng.normal(0, 0.035), -FRAME_MARGIN[0], FRAME_MARGIN[0])),
               float(np.clip(rng.normal(0, 0.06), -FRAME_MARGIN[1], FRAME_MARGIN[1]))),
        zoom=rng.uniform(0.93, 1.07), **d)


# --- geometry -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Solid:
    """A convex polyhedron in the car frame: vertices (N, 3); faces as vertex-index tuples with a tag,
    an outward unit normal (F, 3) and a centre (F, 3) each."""
    vertices: np.ndarray
    faces: tuple[tuple[int, ...], ...]
    tags: tuple[str, ...]
    normals: np.ndarray
    centres: np.ndarray


def _solid(vertices: np.ndarray, faces: list[tuple[int, ...]], tags: list[str]) -> Solid:
    inside = vertices.mean(0)
    normals, centres = [], []
    for f in faces:
        p = vertices[list(f)]
        n = np.cross(p, np.roll(p, -1, 0)).sum(0)  # Newell's method
        c = p.mean(0)
        n = n / np.linalg.norm(n)
        normals.append(n if n @ (c - inside) > 0 else -n)
        centres.append(c)
    return Solid(vertices, tuple(faces), tuple(tags), np.array(normals), np.array(centres))


def _prism(profile: list[tuple[float, float]], edge_tags: list[str], half_width: tuple[float, float],
           z_range: tuple[float, float]) -> Solid:
    """Extrude a convex (x, z) profile across y; the half width goes linearly from half_width[0] at
    z_range[0] to half_width[1] at z_range[1] (sides leaning in). Edge i joins points i and i+1."""
    xz = np.array(profile, float)
    n = len(xz)
    t = (xz[:, 1] - z_range[0]) / (z_range[1] - z_range[0])
    hw = half_width[0] + (half_width[1] - half_width[0]) * t
    vertices = np.concatenate([np.column_stack([xz[:, 0], hw, xz[:, 1]]), np.column_stack([xz[:, 0], -hw, xz[:, 1]])])
    faces = [tuple(range(n)), tuple(range(n, 2 * n))]
    faces += [(i, (i + 1) % n, n + (i + 1) % n, n + i) for i in range(n)]
    return _solid(vertices, faces, ["left", "right"] + edge_tags)


def _box(x: tuple[float, float], y: tuple[float, float], z: tuple[float, float]) -> Solid:
    v = np.array([(x[i], y[j], z[k]) for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    faces = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5)]
    return _solid(v, faces, ["rear", "front", "right", "left", "bottom", "top"])


@functools.lru_cache(maxsize=4)
def car_solids(spec: CarSpec) -> dict[str, Solid]:
    """The body, cabin and mirrors of a car as convex solids (the wheels are in ``wheel_centres``)."""
    xf, xr, zb, zt = spec.length / 2, -spec.length / 2, spec.clearance, spec.belt
    ztf, ztr = zt - spec.hood_drop, zt - spec.deck_drop
    x_cf, x_cr = xf - spec.hood, xr + spec.deck
    if (x_cf - spec.windscreen_run) - (x_cr + spec.rear_run) < 0.2:
        raise ValueError(f"roof shorter than 0.2 m: {spec}")
    body = _prism([(xf - 0.22, zb), (xf, zb + 0.12), (xf, ztf - NOSE[1]), (xf - NOSE[0], ztf), (x_cf, zt), (x_cr, zt),
                   (xr + TAIL[0], ztr), (xr, ztr - TAIL[1]), (xr, zb + 0.12), (xr + 0.22, zb)],
                  ["corner", "front", "corner", "top", "top", "top", "corner", "rear", "corner", "bottom"],
                  (spec.width / 2, spec.width / 2), (zb, zt))
    cabin_hw = (spec.width / 2 - 0.06, spec.width / 2 - 0.22)
    cabin = _prism([(x_cf, zt), (x_cf - spec.windscreen_run, spec.roof), (x_cr + spec.rear_run, spec.roof), (x_cr, zt)],
                   ["front", "top", "rear", "bottom"], cabin_hw, (zt, spec.roof))
    mirror_x, mirror_z = (x_cf - 0.28, x_cf - 0.08), (zt + 0.03, zt + 0.17)
    return {"body": body, "cabin": cabin,
            "mirror_left": _box(mirror_x, (cabin_hw[0] - 0.05, spec.width / 2 + 0.16), mirror_z),
            "mirror_right": _box(mirror_x, (-spec.width / 2 - 0.16, -cabin_hw[0] + 0.05), mirror_z)}


TYRE_WIDTH = 0.22
_CIRCLE = np.linspace(0, 2 * np.pi, 32, endpoint=False)


def wheel_centres(spec: CarSpec) -> np.ndarray:
    """(4, 3) centres of the wheels' outer faces (flush with the body sides), car frame."""
    x_front = spec.length / 2 - spec.front_overhang
    return np.array([(x, s * (spec.width / 2 - 0.01), spec.wheel_radius)
                     for x in (x_front, x_front - spec.wheelbase) for s in (1, -1)])


def _tyre(spec: CarSpec, centre: np.ndarray) -> np.ndarray:
    """(64, 3) points whose convex hull is the tyre (a cylinder) with its outer face at centre."""
    inner = centre - (0, np.sign(centre[1]) * TYRE_WIDTH, 0)
    return np.concatenate([_disc(centre, spec.wheel_radius), _disc(inner, spec.wheel_radius)])


def _footprint(spec: CarSpec, grow: float) -> np.ndarray:
    """(4, 3) corners of the car's rectangle on the floor, grown by grow metres each side."""
    x, y = spec.length / 2 + grow, spec.width / 2 + grow
    return np.array([(x, y, 0.0), (x, -y, 0.0), (-x, -y, 0.0), (-x, y, 0.0)])


def _disc(centre: np.ndarray, radius: float, z_min: float = -np.inf) -> np.ndarray:
    """(32, 3) points of a vertical circle across the car's y axis, cut off below z_min."""
    return np.column_stack([centre[0] + radius * np.cos(_CIRCLE), np.full(_CIRCLE.size, centre[1]),
                            np.maximum(centre[2] + radius * np.sin(_CIRCLE), z_min)])


# --- camera ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Camera:
    rotation: np.ndarray  # (3, 3) car frame -> world, the turntable turned to the view
    offset: np.ndarray  # (3,) the car's centre from the turntable axis, car frame
    position: np.ndarray  # (3,) camera centre, world
    axes: np.ndarray  # (3, 3) rows: image right, image up, viewing direction (world)
    focal: float  # pixels
    centre: tuple[float, float]  # pixel (x, y) of the aim point

    def world(self, p: np.ndarray) -> np.ndarray:
        """(N, 3) car frame -> (N, 3) world."""
        return (p + self.offset) @ self.rotation.T

    def pixels(self, p: np.ndarray, in_car_frame: bool = True) -> np.ndarray:
        """(N, 3) points -> (N, 2) float pixel (x, y)."""
        q = ((self.world(p) if in_car_frame else p) - self.position) @ self.axes.T
        return self.centre + self.focal * np.column_stack([q[:, 0], -q[:, 1]]) / q[:, 2:]

    def sees(self, normal: np.ndarray, point: np.ndarray) -> bool:
        """Whether a face (car-frame outward normal and point) faces the camera."""
        return float((self.rotation @ normal) @ (self.position - self.world(point[None])[0])) > 0


def studio_camera(azimuth_deg: float, focal: float, centre: tuple[float, float],
                  offset: tuple[float, float] = (0.0, 0.0)) -> Camera:
    """The studio camera, with the turntable turned by azimuth_deg (0: the car faces the camera)."""
    a = np.radians(azimuth_deg)
    rotation = np.array([[-np.sin(a), np.cos(a), 0], [-np.cos(a), -np.sin(a), 0], [0, 0, 1]])
    rise = CAM_DISTANCE * np.tan(np.radians(CAM_ELEVATION_DEG))
    position = np.array([0.0, -CAM_DISTANCE, CAM_AIM_Z + rise])
    forward = np.array([0.0, CAM_DISTANCE, -rise]) / np.hypot(CAM_DISTANCE, rise)
    right = np.array([1.0, 0.0, 0.0])
    return Camera(rotation, np.array([*offset, 0.0]), position, np.array([right, np.cross(right, forward), forward]),
                  focal, centre)


# --- drawing --------------------------------------------------------------------------------------
_SHIFT = 4  # cv2 sub-pixel bits


def _fixed(px: np.ndarray) -> np.ndarray:
    return np.round(px * (1 << _SHIFT)).astype(np.int32)


def _fill(img: np.ndarray, px: np.ndarray, colour, hull: bool = False) -> None:
    """Anti-aliased convex polygon (its convex hull if hull) of (N, 2) float pixels."""
    pts = _fixed(px)
    cv2.fillConvexPoly(img, cv2.convexHull(pts) if hull else pts, tuple(map(float, colour)), cv2.LINE_AA, _SHIFT)


def _blend(img: np.ndarray, px: np.ndarray, colour, alpha: float) -> None:
    """Blend a convex polygon into img with opacity alpha (touching only its bounding box)."""
    x0, y0 = np.maximum(np.floor(px.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(px.max(0)).astype(int) + 2, img.shape[1::-1])
    if x1 <= x0 or y1 <= y0:
        return
    roi = img[y0:y1, x0:x1]
    over = roi.copy()
    _fill(over, px - (x0, y0), colour)
    cv2.addWeighted(over, alpha, roi, 1 - alpha, 0, dst=roi)


def _shade(base, normal_world: np.ndarray, gloss: float) -> np.ndarray:
    """Flat shading of a face: Lambert under the studio lights, plus the sky reflected by gloss."""
    c = np.asarray(base, float) * (0.7 + 0.3 * max(0.0, float(normal_world @ LIGHT)))
    sky = gloss * (0.06 + 0.3 * max(0.0, float(normal_world[2])))
    return c * (1 - sky) + SKY * sky


def _clip_z(poly: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The part of a convex (N, 2) (x, z) polygon with lo <= z <= hi (Sutherland-Hodgman)."""
    for bound, keep in ((lo, lambda z: z >= lo), (hi, lambda z: z <= hi)):
        out = []
        for a, b in zip(poly, np.roll(poly, -1, 0)):
            if keep(a[1]):
                out.append(a)
            if keep(a[1]) != keep(b[1]):
                out.append(a + (b - a) * (bound - a[1]) / (b[1] - a[1]))
        poly = np.array(out).reshape(-1, 2)
    return poly


def _on_side(xz: np.ndarray, y: float) -> np.ndarray:
    return np.column_stack([xz[:, 0], np.full(len(xz), y), xz[:, 1]])


def _draw_body(img: np.ndarray, spec: CarSpec, body: Solid, cam: Camera, rng: np.random.Generator) -> None:
    """The lower body's visible faces with their details: bands and door gaps on the sides, wheel
    arches and the near wheels, lights, grille and plates on the ends."""
    paint, ends = np.array(spec.paint), np.array([spec.length / 2 + 0.004, -spec.length / 2 - 0.004])
    xf, zb, zt = spec.length / 2, spec.clearance, spec.belt
    ztf = zt - spec.hood_drop
    for face, tag, n, c in zip(body.faces, body.tags, body.normals, body.centres):
        if tag == "bottom" or not cam.sees(n, c):
            continue
        n_world = cam.rotation @ n
        colour = _shade(paint, n_world, spec.gloss)
        _fill(img, cam.pixels(body.vertices[list(face)]), colour)
        if tag in ("left", "right"):
            y = body.vertices[face[0], 1]
            xz = body.vertices[list(face)][:, [0, 2]]
            _fill(img, cam.pixels(_on_side(_clip_z(xz, zb, zb + 0.16), y)), colour * 0.72)
            _fill(img, cam.pixels(_on_side(_clip_z(xz, zt - 0.16, zt - 0.11), y)), np.minimum(colour * 1.12 + 12, 255))
            x_streak = rng.uniform(-spec.length / 4, spec.length / 4)
            streak = np.array([(x_streak, zb + 0.2), (x_streak + 0.3, zb + 0.2), (x_streak + 0.5, zt - 0.18),
                               (x_streak + 0.2, zt - 0.18)])
            _blend(img, cam.pixels(_on_side(streak, y)), SKY, 0.2 * spec.gloss)
            thick = max(1, round(img.shape[1] / 1200))
            for x in (xf - spec.hood - 0.05, xf - spec.hood - 0.05 - 1.0):
                gap = cam.pixels(_on_side(np.array([(x, zb + 0.1), (x - 0.05, zt - 0.06)]), y))
                a, b = _fixed(gap).tolist()
                cv2.line(img, a, b, tuple(map(float, colour * 0.55)), thick, cv2.LINE_AA, _SHIFT)
            for centre in wheel_centres(spec):
                if np.sign(centre[1]) == np.sign(y):
                    _draw_wheel_face(img, spec, centre, cam)
        elif tag in ("front", "rear"):
            front = tag == "front"
            x = ends[0] if front else ends[1]
            z_top = ztf - NOSE[1] if front else zt - spec.deck_drop - TAIL[1]
            w = spec.width / 2
            lamp = (238, 242, 245) if front else (40, 30, 185)
            for s in (1, -1):
                _fill(img, cam.pixels(np.array([(x, s * (w - 0.06), z_top - 0.03), (x, s * (w - 0.42), z_top - 0.03),
                                                (x, s * (w - 0.42), z_top - 0.15), (x, s * (w - 0.06), z_top - 0.18)])),
                      lamp)
            if front:
                _fill(img, cam.pixels(np.array([(x, 0.4, z_top - 0.05), (x, -0.4, z_top - 0.05), (x, -0.4, zb + 0.24),
                                                (x, 0.4, zb + 0.24)])), (38, 38, 40))
            plate_z = zb + 0.16 if front else zb + 0.3
            _fill(img, cam.pixels(np.array([(x, 0.26, plate_z + 0.12), (x, -0.26, plate_z + 0.12), (x, -0.26, plate_z),
                                            (x, 0.26, plate_z)])), (232, 232, 232))


def _draw_wheel_face(img: np.ndarray, spec: CarSpec, centre: np.ndarray, cam: Camera) -> None:
    """A near wheel seen through its arch: dark arch, tyre, rim with five spokes, hub."""
    r = spec.wheel_radius
    _fill(img, cam.pixels(_disc(centre + (0, np.sign(centre[1]) * 0.002, 0), 1.12 * r, spec.clearance + 0.02)),
          np.array(spec.paint) * 0.25)
    _fill(img, cam.pixels(_disc(centre, r)), TYRE)
    _fill(img, cam.pixels(_disc(centre, 0.64 * r)), spec.rim)
    _fill(img, cam.pixels(_disc(centre, 0.5 * r)), np.array(spec.rim) * 0.6)
    for k in range(5):  # spokes
        a = 2 * np.pi * k / 5
        d, e = np.array([np.cos(a), 0, np.sin(a)]), np.array([-np.sin(a), 0, np.cos(a)])
        spoke = centre + np.array([0.12 * r * e, -0.12 * r * e, 0.52 * r * d - 0.2 * r * e, 0.52 * r * d + 0.2 * r * e])
        _fill(img, cam.pixels(spoke), spec.rim)
    _fill(img, cam.pixels(_disc(centre, 0.14 * r)), np.array(spec.rim) * 0.8)


def _draw_cabin(img: np.ndarray, spec: CarSpec, cabin: Solid, cam: Camera) -> None:
    """Cabin faces: roof, pillars and glass."""
    for face, tag, n, c in zip(cabin.faces, cabin.tags, cabin.normals, cabin.centres):
        if tag == "bottom" or not cam.sees(n, c):
            continue
        n_world = cam.rotation @ n
        p = cabin.vertices[list(face)]
        _fill(img, cam.pixels(p), _shade(spec.roof_paint if tag == "top" else spec.paint, n_world, spec.gloss))
        if tag == "top":
            continue
        glass = _shade(GLASS, n_world, 0.7)
        centre = p.mean(0)
        if tag in ("left", "right"):  # side windows (corners: low front, high front, high rear, low rear)
            w = centre + 0.82 * (p - centre)
            _fill(img, cam.pixels(w), glass)
            low, high = w[0] + 0.48 * (w[3] - w[0]), w[1] + 0.48 * (w[2] - w[1])
            dx = np.array([0.05, 0.0, 0.0])
            _fill(img, cam.pixels(np.array([low + dx, high + dx, high - dx, low - dx])), glass * 0.5)  # B pillar
        else:  # windscreen / rear window (corners: low, high, high, low across the car)
            g = centre + 0.86 * (p - centre)
            _fill(img, cam.pixels(g), glass)
            streak = np.array([g[0] + 0.3 * (g[3] - g[0]), g[1] + 0.45 * (g[2] - g[1]),
                               g[1] + 0.6 * (g[2] - g[1]), g[0] + 0.42 * (g[3] - g[0])])
            _blend(img, cam.pixels(streak), SKY, 0.15)


def _draw_box(img: np.ndarray, solid: Solid, cam: Camera, paint, gloss: float) -> None:
    for face, n, c in zip(solid.faces, solid.normals, solid.centres):
        if cam.sees(n, c):
            _fill(img, cam.pixels(solid.vertices[list(face)]), _shade(paint, cam.rotation @ n, gloss))


# --- background -----------------------------------------------------------------------------------
def _margins(width: int, height: int) -> tuple[int, int]:
    return int(np.ceil(FRAME_MARGIN[0] * width)) + 2, int(np.ceil(FRAME_MARGIN[1] * height)) + 2


@functools.lru_cache(maxsize=2)
def studio_background(width: int, height: int) -> np.ndarray:
    """The empty studio, (height + 2 my, width + 2 mx, 3) uint8 BGR: framing crops it."""
    mx, my = _margins(width, height)
    h, w = height + 2 * my, width + 2 * mx
    rows = np.arange(h, dtype=np.float32)[:, None]
    cols = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / width
    horizon = int(round(my + HORIZON_ROW * height))
    wall = 224 + 16 * np.clip(rows / horizon, 0, 1)
    floor = 158 + 28 * np.clip((rows - horizon) / (h - horizon), 0, 1)
    grey = np.where(rows < horizon, wall, floor) * (1 - 0.06 * cols ** 2)
    img = np.repeat(grey[:, :, None], 3, axis=2)
    img[..., 0] += 3  # a slightly cool white
    img = np.clip(img, 0, 255).astype(np.uint8)
    cam = studio_camera(0, FOCAL_PER_WIDTH * width, (mx + width / 2, my + AIM_ROW * height))
    angles = np.linspace(0, 2 * np.pi, 180)
    rim = np.column_stack([TURNTABLE_RADIUS * np.cos(angles), TURNTABLE_RADIUS * np.sin(angles), np.zeros(180)])
    px = cam.pixels(rim, in_car_frame=False)
    floor_part = img[horizon:].copy()
    _fill(floor_part, px - (0, horizon), (174, 172, 170))  # the turntable, lighter than the floor
    cv2.polylines(floor_part, [_fixed(px - (0, horizon))], True, (128, 126, 124), max(1, width // 640),
                  cv2.LINE_AA, _SHIFT)
    img[horizon:] = floor_part
    text, font = "DEMOCARS", cv2.FONT_HERSHEY_SIMPLEX
    thickness = max(1, int(0.018 * width))
    (tw, _), _ = cv2.getTextSize(text, font, 1.0, thickness)
    scale = 0.72 * width / tw
    (tw, _), _ = cv2.getTextSize(text, font, scale, thickness)
    cv2.putText(img, text, (int(w / 2 - tw / 2), int(horizon - 0.03 * height)), font, scale, (100, 96, 94),
                thickness, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), max(0.6, width / 1500))


@functools.lru_cache(maxsize=2)
def _noise(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed field of Gaussian noise, split into its positive and negative parts (uint8 each);
    each image adds a random crop of it."""
    n = np.rint(np.random.default_rng(2017).normal(0, NOISE_SIGMA, (height + 32, width + 32, 3)))
    n = np.clip(n, -255, 255)
    return np.maximum(n, 0).astype(np.uint8), np.maximum(-n, 0).astype(np.uint8)


def _roi(px: np.ndarray, pad: float, width: int, height: int) -> tuple[int, int, int, int] | None:
    x0, y0 = np.floor(px.min(0) - pad).astype(int)
    x1, y1 = np.ceil(px.max(0) + pad).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _draw_shadow(img: np.ndarray, spec: CarSpec, cam: Camera) -> None:
    """Darken the floor under the car: a tight contact shadow plus a wide soft one (at low resolution)."""
    height, width = img.shape[:2]
    roi = _roi(cam.pixels(_footprint(spec, 0.3)), 0.06 * width, width, height)
    if roi is None:
        return
    x0, y0, x1, y1 = roi
    k = SHADOW_DOWNSCALE
    small = np.zeros(((y1 - y0) // k + 1, (x1 - x0) // k + 1), np.float32)
    for grow, sigma, strength in ((0.3, 0.03, 0.25), (0.0, 0.008, 0.3)):
        layer = np.zeros(small.shape, np.uint8)
        _fill(layer, (cam.pixels(_footprint(spec, grow)) - (x0, y0)) / k, (255,))
        small += cv2.GaussianBlur(layer.astype(np.float32), (0, 0), sigma * width / k) * (strength / 255)
    big = cv2.resize(small, (small.shape[1] * k, small.shape[0] * k), interpolation=cv2.INTER_LINEAR)
    shade = 1 - big[: y1 - y0, : x1 - x0]
    region = img[y0:y1, x0:x1]
    region[:] = (region * shade[:, :, None]).astype(np.uint8)


def _draw_reflection(img: np.ndarray, spec: CarSpec, solids: dict[str, Solid], cam: Camera) -> None:
    """A faint mirror image of the car in the floor, fading away from the car."""
    height, width = img.shape[:2]
    flip = np.array([1.0, 1.0, -1.0])
    hulls = [(cam.pixels(s.vertices * flip), spec.paint if name != "cabin" else GLASS) for name, s in solids.items()]
    hulls += [(cam.pixels(_tyre(spec, c) * flip), TYRE) for c in wheel_centres(spec)]
    roi = _roi(np.concatenate([p for p, _ in hulls]), 2, width, height)
    if roi is None:
        return
    x0, y0, x1, y1 = roi
    region = img[y0:y1, x0:x1]
    over = region.copy()
    for px, colour in hulls:
        _fill(over, px - (x0, y0), np.array(colour) * 0.8, hull=True)
    top = cam.pixels(np.array([(0.0, 0.0, 0.0)]))[0, 1]  # the car's footprint centre on the floor
    fade = np.clip(1 - (np.arange(y0, y1) - top) / (0.12 * height), 0, 1) * 0.22
    fade[np.arange(y0, y1) < top - 0.04 * height] = 0.22
    a = fade[:, None, None].astype(np.float32)
    region[:] = (region * (1 - a) + over * a).astype(np.uint8)


# --- one view ------------------------------------------------------------------------------------
def render_view(spec: CarSpec, view: int, width: int, height: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Photograph ``spec`` in view 1..16: (image (H, W, 3) uint8 BGR, mask (H, W) bool).

    rng gives the per-image jitter (position, scale, angle), highlight and noise; the mask is the
    exact union of the solids' silhouettes."""
    if not 1 <= view <= N_VIEWS:
        raise ValueError(f"view must be in 1..{N_VIEWS}, got {view}")
    mx, my = _margins(width, height)
    sx, sy = round(spec.shift[0] * width), round(spec.shift[1] * height)
    centre = (width / 2 + sx + rng.normal(0, 0.003 * width), AIM_ROW * height + sy + rng.normal(0, 0.003 * height))
    cam = studio_camera((view - 1) * VIEW_STEP_DEG + rng.normal(0, 0.6),
                        FOCAL_PER_WIDTH * width * spec.zoom * (1 + rng.normal(0, 0.005)), centre, spec.offset)
    img = studio_background(width, height)[my - sy: my - sy + height, mx - sx: mx - sx + width].copy()
    solids = car_solids(spec)
    wheels = wheel_centres(spec)
    tyres = [cam.pixels(_tyre(spec, c)) for c in wheels]
    _draw_shadow(img, spec, cam)
    _draw_reflection(img, spec, solids, cam)
    mask = np.zeros((height, width), np.uint8)
    for px in tyres + [cam.pixels(s.vertices) for s in solids.values()]:
        cv2.fillConvexPoly(mask, cv2.convexHull(_fixed(px)), 1, cv2.LINE_8, _SHIFT)
    for px in tyres:  # all four, the body hides what it must
        _fill(img, px, TYRE, hull=True)
    body_mid = _shade(spec.paint, np.array([0.0, -1.0, 0.0]), spec.gloss)
    _fill(img, cam.pixels(solids["body"].vertices), body_mid, hull=True)
    _draw_body(img, spec, solids["body"], cam, rng)
    depth = {name: float(np.linalg.norm(cam.world(s.vertices).mean(0) - cam.position)) for name, s in solids.items()}
    for name in sorted(("cabin", "mirror_left", "mirror_right"), key=lambda k: -depth[k]):
        if name == "cabin":
            _fill(img, cam.pixels(solids[name].vertices), body_mid, hull=True)
            _draw_cabin(img, spec, solids[name], cam)
        else:
            _draw_box(img, solids[name], cam, spec.paint, spec.gloss)
    pos, neg = _noise(width, height)
    oy, ox = rng.integers(0, 32, 2)
    cv2.add(img, pos[oy: oy + height, ox: ox + width], dst=img)
    cv2.subtract(img, neg[oy: oy + height, ox: ox + width], dst=img)
    return img, mask.astype(bool)


# --- files ----------------------------------------------------------------------------------------
def encode_gif(mask: np.ndarray) -> bytes:
    """(H, W) bool -> palette GIF bytes with values {0, 1}, like the Kaggle masks (mode P, 0 black, 1 white)."""
    im = Image.frombytes("P", mask.shape[::-1], np.ascontiguousarray(mask, np.uint8).tobytes())
    im.putpalette(MASK_PALETTE)
    buf = io.BytesIO()
    im.save(buf, format="GIF", background=1)
    return buf.getvalue()


def car_ids(n: int, seed: int) -> list[str]:
    """n distinct 12-hex-digit car ids, deterministic from seed."""
    rng, ids = np.random.default_rng(seed), []
    while len(ids) < n:
        car = f"{int(rng.integers(0, 16 ** 12, dtype=np.int64)):012x}"
        if car not in ids:
            ids.append(car)
    return ids


@dataclass(frozen=True)
class _Job:
    root: Path
    images: str  # folder names
    masks: str
    car: str
    spec: CarSpec
    seed: tuple[int, int]
    width: int
    height: int


def _render_car(job: _Job) -> list[tuple[str, str]]:
    """Write one car's 16 JPEGs and GIF masks; return its (image name, RLE) rows."""
    rows = []
    for view in range(1, N_VIEWS + 1):
        img, mask = render_view(job.spec, view, job.width, job.height, np.random.default_rng([*job.seed, view]))
        name = f"{job.car}_{view:02d}"
        ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {name}")
        files.write_bytes_atomic(job.root / job.images / f"{name}.jpg", jpg.tobytes())
        files.write_bytes_atomic(job.root / job.masks / files.mask_name(name), encode_gif(mask))
        rows.append((f"{name}.jpg", encode(mask)))
    return rows


def _csv(header: str, lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in [header, *lines])


def _metadata_row(car: str, spec: CarSpec, rng: np.random.Generator) -> str:
    make, model = MAKES[rng.integers(len(MAKES))], MODELS[spec.body_type][rng.integers(3)]
    year, trim1, trim2 = rng.integers(2005, 2018), TRIMS1[rng.integers(len(TRIMS1))], TRIMS2[rng.integers(len(TRIMS2))]
    return f"{car},{year},{make},{model},{trim1},{trim2}"


def generate(root: Path, n_train_cars: int = 16, n_test_cars: int = 4, width: int = 1918, height: int = 1280,
             seed: int = 0, workers: int = 2) -> dict:
    """Write a synthetic Carvana dataset into ``root`` (see the module docstring); return a summary.

    root gets train/, train_masks/, train_masks.csv, metadata.csv, test/, test_masks/ (the test truth,
    which Kaggle does not give) and sample_submission.csv. Files are written atomically; a folder
    holding files of another generation (other ids) is a PipelineError rather than a silent mix;
    regenerating with the same arguments overwrites in place.
    """
    if n_train_cars < 1 or n_test_cars < 0 or width < 64 or height < 64:
        raise ValueError(f"need n_train_cars >= 1, n_test_cars >= 0, size >= 64x64; got {n_train_cars}, "
                         f"{n_test_cars}, {width}x{height}")
    start = time.perf_counter()
    root = Path(root)
    ids = car_ids(n_train_cars + n_test_cars, seed)
    splits = [(files.TRAIN, files.TRAIN_MASKS, ids[:n_train_cars]), (files.TEST, files.TEST_MASKS, ids[n_train_cars:])]
    for images, masks, cars in splits:
        expected = {f"{c}_{v:02d}.jpg" for c in cars for v in range(1, N_VIEWS + 1)}
        expected |= {files.mask_name(n[:-4]) for n in expected}
        for folder in (root / images, root / masks):
            for tmp in folder.glob(".*.tmp*"):  # left by an interrupted generation (files.atomic_path)
                if tmp.name[1:].rsplit(".tmp", 1)[0] in expected:
                    tmp.unlink()
            stray = sorted(p.name for p in folder.glob("*") if p.name not in expected) if folder.is_dir() else []
            if stray:
                raise PipelineError(f"{folder}: holds {len(stray)} files this generation would not write (e.g. "
                                    f"{stray[0]}: another seed or car count?); empty the folder or use another one")
    jobs, meta = [], []
    for i, car in enumerate(ids):
        rng = np.random.default_rng([seed, i])
        spec = car_spec(rng, near_background=i % 4 == 0)
        meta.append(_metadata_row(car, spec, rng))
        images, masks = (files.TRAIN, files.TRAIN_MASKS) if i < n_train_cars else (files.TEST, files.TEST_MASKS)
        jobs.append(_Job(root, images, masks, car, spec, (seed, i), width, height))
    with parallel.ordered(_render_car, jobs, workers) as results:
        rows = list(results)
    train_rows = sorted(r for car_rows in rows[:n_train_cars] for r in car_rows)
    test_names = sorted(name for car_rows in rows[n_train_cars:] for name, _ in car_rows)
    files.write_text_atomic(root / files.TRAIN_MASKS_CSV, _csv("img,rle_mask", [f"{n},{r}" for n, r in train_rows]))
    files.write_text_atomic(root / files.SAMPLE_SUBMISSION, _csv("img,rle_mask", [f"{n},1 1" for n in test_names]))
    files.write_text_atomic(root / files.METADATA_CSV, _csv("id,year,make,model,trim1,trim2", sorted(meta)))
    return {"root": str(root), "train_cars": n_train_cars, "test_cars": n_test_cars, "train_images": len(train_rows),
            "test_images": len(test_names), "width": width, "height": height, "seed": seed,
            "seconds": round(time.perf_counter() - start, 2)}
