"""Training data on top of lib/cache.py (cached or decoded per item): augmentation, seeded sampling, loaders."""
from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lib.cache import Cache
from lib.errors import PipelineError
from lib.parallel import cpu_count


def train_transform(hflip_p: float, shift_scale_rotate_p: float, color_p: float,
                    mask_interpolation: int = cv2.INTER_LINEAR, scale: tuple[float, float] = (0.92, 1.08),
                    translate: float = 0.04, border: str = "reflect", crop: tuple[int, int] | None = None,
                    rgb8: bool = True):
    """Joint image/mask augmentation (what worked for the Carvana top teams): flip, affine, colour.
    ``mask_interpolation``: linear for soft binary masks, nearest for label maps (lib/task.py). ``border``
    "constant" fills what a zoom-out or shift uncovers with black (mask: background), as a photo taken from further
    away with a dark floor edge in view; "reflect" mirrors the photo there. ``crop`` (h, w): a random window of that
    size, last, so that the network trains on the detail of the whole-image size at the cost of the crop's.
    ``rgb8`` False (16-bit, one or N channels: lib/imageformat.py): the colour step is brightness/contrast only
    (hue and saturation need 3-channel RGB), the brightness relative to the image's mean: by the dtype's maximum it
    would add up to 6553 counts to 16-bit images whose values may all lie below 4000."""
    import albumentations as A
    mode = cv2.BORDER_CONSTANT if border == "constant" else cv2.BORDER_REFLECT_101
    colour = A.OneOf([A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10),
                      A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1)], p=color_p) if rgb8 \
        else A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, brightness_by_max=False, p=color_p)
    return A.Compose([
        A.HorizontalFlip(p=hflip_p),
        A.Affine(scale=scale, translate_percent=(-translate, translate), rotate=(-4, 4), border_mode=mode,
                 fill=0, fill_mask=0, mask_interpolation=mask_interpolation, p=shift_scale_rotate_p),
        colour,
        *([A.RandomCrop(*crop)] if crop else []),
    ])


def transform_for(p, mask_interpolation: int = cv2.INTER_LINEAR, rgb8: bool = True):
    """The training augmentation that Params ``p`` asks for (None with --no-augment), for 8-bit RGB images or
    (``rgb8`` False) others."""
    crop = (p.crop_height or p.height, p.crop_width or p.width)
    crop = crop if crop != (p.height, p.width) else None
    if not p.augment:
        if crop:
            raise PipelineError("--crop-height/--crop-width crop in the augmentation: they need --augment")
        return None
    return train_transform(p.hflip_p, p.shift_scale_rotate_p, p.color_p, mask_interpolation,
                           (p.scale_low, p.scale_high), p.translate, p.border, crop, rgb8)


class SeededShuffle(Sampler):
    """Yields (row, seed) pairs: a fresh permutation per epoch and one augmentation seed per sample.

    Both depend only on (seed, epoch), so a resumed run sees exactly the batches and augmentations an
    uninterrupted run would, whatever the number of loader workers. With ``world`` > 1 (one sampler per rank)
    the same permutation is cut into global batches of ``batch`` items and rank ``rank`` takes its
    ``batch // world`` of each, so N processes follow the schedule of one; an incomplete last global batch is
    dropped, as the single-process loader drops it.
    """

    def __init__(self, rows: np.ndarray, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1,
                 batch: int = 1):
        if world > 1 and batch % world:
            raise ValueError(f"a global batch of {batch} does not split over {world} ranks")
        self.rows, self.seed, self.shuffle, self.epoch = rows, seed, shuffle, 0
        self.rank, self.world, self.batch = rank, world, batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.rows)) if self.shuffle else np.arange(len(self.rows))
        seeds = rng.integers(0, 2**31 - 1, len(self.rows))
        if self.world > 1:
            per, n = self.batch // self.world, len(self.rows) // self.batch * self.batch
            mine = (np.arange(0, n, self.batch)[:, None] + self.rank * per + np.arange(per)[None]).ravel()
            order, seeds = order[mine], seeds[mine]
        return iter(zip(self.rows[order].tolist(), seeds.tolist()))

    def __len__(self) -> int:
        if self.world > 1:
            return len(self.rows) // self.batch * (self.batch // self.world)
        return len(self.rows)


class TrainSet(Dataset):
    """Items (image (C, H, W) uint8 (RGB) or uint16, mask (1, H, W) uint8) of a Cache's rows at the network size,
    augmented per
    (row, seed). Without the image cache each item decodes its JPEG and GIF, in the loader's worker processes."""

    def __init__(self, cache: Cache, transform=None):
        self.cache, self.transform = cache, transform

    def __len__(self) -> int:
        return len(self.cache.ids)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        row, seed = item
        return as_item(*self.cache.item(row), self.transform, seed)


def as_item(image: np.ndarray, mask: np.ndarray, transform, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, C) image and (H, W) mask, augmented by ``transform`` (if any) with ``seed`` -> a loader's item:
    ((C, H, W), (1, H, W)) tensors."""
    if transform is not None:
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask)
        image, mask = out["image"], out["mask"]
    return (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
            torch.from_numpy(np.ascontiguousarray(mask))[None])


def worker_count(workers: int) -> int:
    """``--workers``, at most the CPUs this process may use (more processes than cores only compete)."""
    return max(0, min(workers, cpu_count()))


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: int, pin: bool,
                drop_last: bool = False) -> DataLoader:
    workers = worker_count(workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
                      drop_last=drop_last, persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def tile_rows(rows: np.ndarray, sizes: list[tuple[int, int]], tile: int) -> np.ndarray:
    """The rows of an epoch of tiles: each row of ``rows`` (network-scale size ``sizes[row]``) repeated
    ceil(h * w / tile^2) times, so an epoch draws about as many tile pixels as its images hold."""
    counts = [max(1, -(-sizes[r][0] * sizes[r][1] // (tile * tile))) for r in rows.tolist()]
    return np.repeat(rows, counts)


def tile_window(size: tuple[int, int], tile: int, points: np.ndarray, foreground: float,
                rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, th, tw) of a random window of at most ``tile`` x ``tile`` inside an image of ``size`` (h, w):
    with probability ``foreground`` (and foreground ``points`` (K, 2) (y, x) to choose from) one that holds a
    foreground pixel drawn from them, else one placed uniformly."""
    h, w = size
    th, tw = min(tile, h), min(tile, w)
    if len(points) and rng.random() < foreground:
        cy, cx = (int(v) for v in points[rng.integers(len(points))])
        top = int(rng.integers(max(0, cy - th + 1), min(cy, h - th) + 1))
        left = int(rng.integers(max(0, cx - tw + 1), min(cx, w - tw) + 1))
    else:
        top, left = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
    return top, left, th, tw


class TileSet(Dataset):
    """Items (image (3, T, T) uint8, mask (1, T, T) uint8) of random ``tile`` x ``tile`` windows of a TileCache's
    rows (``tile_window``, read from the memory-mapped arrays), augmented per (row, seed); an image shorter than the
    tile is reflect-padded to it, as whole-image prediction pads."""

    def __init__(self, tiles, tile: int, foreground: float, transform=None):
        self.tiles, self.tile, self.foreground, self.transform = tiles, tile, foreground, transform

    def __len__(self) -> int:
        return len(self.tiles.ids)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        row, seed = item
        rng = np.random.default_rng(seed)
        top, left, th, tw = tile_window(self.tiles.sizes[row], self.tile, self.tiles.points(row), self.foreground,
                                        rng)
        image = np.array(self.tiles.image(row)[top:top + th, left:left + tw])
        mask = np.array(self.tiles.mask(row)[top:top + th, left:left + tw])
        if (th, tw) != (self.tile, self.tile):
            pad = (0, self.tile - th, 0, self.tile - tw)
            image = cv2.copyMakeBorder(image, *pad, cv2.BORDER_REFLECT_101)
            mask = cv2.copyMakeBorder(mask, *pad, cv2.BORDER_REFLECT_101)
        if self.transform is not None:
            self.transform.set_random_seed(int(rng.integers(0, 2**31 - 1)))
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
                torch.from_numpy(np.ascontiguousarray(mask))[None])
