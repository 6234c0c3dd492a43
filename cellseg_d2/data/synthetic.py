"""Synthetic phase-contrast cell images in the exact Sartorius Kaggle layout.

Each image holds one cell type, as in the real data:
- cort:   ~34 cells, ~240 px, compact round/oval;
- shsy5y: ~340 cells (up to ~800), ~220 px, clustered and touching, some elongated;
- astro:  ~80 cells, ~900 px, large irregular bodies with thin processes.
Rendering imitates phase contrast: grey background with uneven illumination and texture, cells
with dark interiors and bright halos, sensor noise. Masks never overlap (a label image is drawn
first), and are written to ``train.csv`` as row-major RLE, so the real converter reads them.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from ..utils import atomic_open
from .rle import rle_encode

CSV_COLUMNS = ("id", "annotation", "width", "height", "cell_type", "plate_time", "sample_date",
               "sample_id", "elapsed_timedelta")


@dataclass(frozen=True)
class CellStyle:
    mean_count: float      # cells per image at density 1
    max_count: int
    area: float            # median cell area in px at scale 1
    elongated: float       # fraction of elongated cells
    clusters: int          # 0 = uniform placement
    processes: tuple = (0, 0)  # min/max thin processes per cell


STYLES = {
    "cort": CellStyle(mean_count=34, max_count=110, area=240, elongated=0.15, clusters=0),
    "shsy5y": CellStyle(mean_count=340, max_count=800, area=220, elongated=0.3, clusters=12),
    "astro": CellStyle(mean_count=80, max_count=200, area=700, elongated=0.2, clusters=0,
                       processes=(2, 5)),
}


def _cell_shape(rng, style: CellStyle, area: float, cell_type: str) -> np.ndarray:
    """A binary cell mask on its own small canvas."""
    r = np.sqrt(area / np.pi)
    aspect = rng.uniform(2.0, 3.2) if rng.random() < style.elongated else rng.uniform(1.0, 1.4)
    half = int(np.ceil(r * np.sqrt(aspect) * 2.5 + (r * 3 if style.processes[1] else 0))) + 3
    canvas = np.zeros((2 * half + 1, 2 * half + 1), np.uint8)
    angle = rng.uniform(0, 2 * np.pi)
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    # Radius with a few random harmonics: round for cort, irregular for astro.
    wobble = {"cort": 0.06, "shsy5y": 0.1, "astro": 0.25}[cell_type]
    radius = np.ones_like(theta)
    for k in range(2, 6):
        radius += wobble / k * rng.normal() * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    a, b = r * np.sqrt(aspect), r / np.sqrt(aspect)
    x = a * radius * np.cos(theta)
    y = b * radius * np.sin(theta)
    xr = x * np.cos(angle) - y * np.sin(angle) + half
    yr = x * np.sin(angle) + y * np.cos(angle) + half
    cv2.fillPoly(canvas, [np.stack([xr, yr], 1).round().astype(np.int32)], 1)
    for _ in range(rng.integers(style.processes[0], style.processes[1] + 1)):
        phi = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(1.2, 3.0) * r
        pts = [(half, half)]
        for step in range(1, 4):
            phi += rng.normal(0, 0.3)
            d = length * step / 3
            pts.append((half + d * np.cos(phi), half + d * np.sin(phi)))
        pts = np.array(pts).round().astype(np.int32)
        cv2.polylines(canvas, [pts], False, 1, thickness=int(rng.integers(2, 4)))
    return canvas


def _place(label: np.ndarray, shape: np.ndarray, cy: int, cx: int, value: int,
           max_lost: float = 0.25) -> bool:
    """Draw ``shape`` centred at (cy, cx) into free pixels of ``label``; refuse if more than
    ``max_lost`` of it would be hidden by other cells or the border."""
    h, w = label.shape
    sh, sw = shape.shape
    y0, x0 = cy - sh // 2, cx - sw // 2
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + sh), min(w, x0 + sw)
    if ye <= ys or xe <= xs:
        return False
    piece = shape[ys - y0:ye - y0, xs - x0:xe - x0].astype(bool)
    region = label[ys:ye, xs:xe]
    free = piece & (region == 0)
    total = shape.sum()
    if free.sum() < (1 - max_lost) * total or free.sum() < 12:
        return False
    region[free] = value
    return True


def _label_image(rng, cell_type: str, height: int, width: int, density: float,
                 scale: float) -> np.ndarray:
    style = STYLES[cell_type]
    target = int(np.clip(rng.normal(style.mean_count, style.mean_count * 0.3) * density
                         * height * width / (520 * 704), 1, style.max_count * density))
    label = np.zeros((height, width), np.int32)
    centres = None
    if style.clusters:
        k = max(1, int(style.clusters * np.sqrt(density)))
        centres = np.stack([rng.uniform(0, height, k), rng.uniform(0, width, k)], 1)
        spread = rng.uniform(25, 60, k) * np.sqrt(max(density, 0.3))
    n = 0
    for _ in range(target * 6):
        if n >= target:
            break
        area = style.area * scale * scale * np.exp(rng.normal(0, 0.3))
        if centres is not None and rng.random() < 0.85:
            c = rng.integers(len(centres))
            cy, cx = rng.normal(centres[c], spread[c])
        else:
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        shape = _cell_shape(rng, style, area, cell_type)
        if _place(label, shape, int(cy), int(cx), n + 1):
            n += 1
    return label


def _render(rng, label: np.ndarray) -> np.ndarray:
    """Phase-contrast look from a label image."""
    h, w = label.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Uneven illumination: a tilted plane plus a broad vignette, different per image.
    gy, gx = rng.normal(0, 10, 2)
    illum = 128 + gy * (yy / h - 0.5) + gx * (xx / w - 0.5)
    illum -= rng.uniform(5, 15) * (((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3)
    image = illum + rng.uniform(2, 4) * texture / (texture.std() + 1e-6)
    fg = (label > 0).astype(np.uint8)
    boundaries = (cv2.morphologyEx(label.astype(np.float32), cv2.MORPH_GRADIENT,
                                   np.ones((3, 3), np.uint8)) > 0).astype(np.uint8)
    interior = cv2.erode(fg, np.ones((3, 3), np.uint8)) & (1 - boundaries)
    halo = cv2.dilate(fg, np.ones((5, 5), np.uint8)) - fg
    # Cells are dark inside with grainy texture, bright where the phase halo surrounds them and
    # at the contact line between touching cells.
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.2)
    dark = cv2.GaussianBlur(interior.astype(np.float32), (0, 0), 1.0)
    bright = cv2.GaussianBlur((halo | (boundaries & fg)).astype(np.float32), (0, 0), 1.0)
    image += -rng.uniform(22, 32) * dark + rng.uniform(30, 45) * bright + 6 * grain * dark
    image += rng.normal(0, 3.0, (h, w))
    return np.clip(image, 0, 255).round().astype(np.uint8)


def synthesize_image(rng, cell_type: str, height: int = 520, width: int = 704,
                     density: float = 1.0, scale: float = 1.0):
    """Return (uint8 image, int32 label image) for one synthetic image."""
    if cell_type not in STYLES:
        raise ValueError(f"unknown cell type {cell_type!r} (one of {', '.join(STYLES)})")
    label = _label_image(rng, cell_type, height, width, density, scale)
    return _render(rng, label), label


def generate_dataset(out_dir: str, images_per_type: int = 4, cell_types=tuple(STYLES),
                     height: int = 520, width: int = 704, density: float = 1.0,
                     scale: float = 1.0, seed: int = 0, progress: bool = True) -> list:
    """Write ``out_dir/train/<id>.png`` and ``out_dir/train.csv``. Returns the image ids."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "train"), exist_ok=True)
    jobs = [t for t in cell_types for _ in range(images_per_type)]
    ids, rows = [], []
    for i, cell_type in enumerate(tqdm(jobs, desc="synthesizing", unit="img", disable=not progress)):
        image_id = f"{rng.integers(0, 16 ** 12):012x}"
        image, label = synthesize_image(rng, cell_type, height, width, density, scale)
        ok, png = cv2.imencode(".png", image)
        with atomic_open(os.path.join(out_dir, "train", f"{image_id}.png"), "wb") as f:
            f.write(png.tobytes())
        hours = int(rng.choice([11, 13, 17, 19]))
        for k in range(1, int(label.max()) + 1):
            mask = label == k
            if mask.any():
                rows.append({"id": image_id, "annotation": rle_encode(mask), "width": width,
                             "height": height, "cell_type": cell_type, "plate_time": f"{hours}h",
                             "sample_date": "2020-01-01", "sample_id": f"{cell_type}[synthetic]_{i}",
                             "elapsed_timedelta": f"0 days {hours:02d}:00:00"})
        ids.append(image_id)
    with atomic_open(os.path.join(out_dir, "train.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return ids


def synthesize_mosaic(rng, rows: int, cols: int, cell_types=tuple(STYLES), height: int = 520,
                      width: int = 704):
    """A whole-well-like mosaic of rows x cols synthetic images (cell types in turn).
    Returns (uint8 image, int32 label image with ids unique across the mosaic, per-tile list
    of (x, y, cell type))."""
    image = np.zeros((rows * height, cols * width), np.uint8)
    label = np.zeros(image.shape, np.int32)
    tiles = []
    for k in range(rows * cols):
        y, x = (k // cols) * height, (k % cols) * width
        cell_type = cell_types[k % len(cell_types)]
        tile, tile_label = synthesize_image(rng, cell_type, height, width)
        image[y:y + height, x:x + width] = tile
        label[y:y + height, x:x + width] = np.where(tile_label > 0, tile_label + label.max(), 0)
        tiles.append((x, y, cell_type))
    return image, label, tiles
