"""Pseudo-labels: the test photos labelled by a model in training, for more epochs on training + test photos.

``--pseudo-epochs N`` (02): after its ``--epochs``, a run labels every test image of ``input/test`` with its own
weights at the network size (``--tta`` where fixed, else hflip; each label the decision at threshold 0.5 after
``--postprocess`` where fixed), then trains N more epochs on its training images and those labelled photos, from
where it stands, under a second warm-up and cosine at ``--pseudo-lr`` times ``--lr`` (``lib/train.Schedule``).
No truth of any image the run validates on is read: a fold model's validation cars are training cars, never test
photos, so its out-of-fold maps stay honest. A test image has no truth at all; the labels are the model's.

The labelled set is kept beside the run's checkpoints (``pseudo.npz``: the images at the network size, the labels
and the digest of the model that made them), written once, atomically, before the first pseudo-label epoch, so a
resumed run trains on the same labels.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lib import files, inputs, postprocess, tta
from lib.cache import load_net_image
from lib.data import as_item
from lib.errors import PipelineError
from lib.imageformat import ImageFormat
from lib.progress import progress
from lib.task import Task

FILE = "pseudo.npz"


def test_paths(p) -> list[Path]:
    """The test images a run labels (sorted by id): every one of ``input/test`` (as 03 predicts them), or
    ``--pseudo-max`` of them drawn with ``--seed``; [] without a test folder."""
    if not (p.input_dir / files.TEST).is_dir():
        return []
    ids, paths = inputs.check_test(p.input_dir, Task.of(p))
    ids = sorted(set(ids))
    if 0 < p.pseudo_max < len(ids):
        ids = [ids[i] for i in sorted(np.random.default_rng(p.seed).choice(len(ids), p.pseudo_max, replace=False))]
    return [paths[i] for i in ids]


def sample_note(p, labelled: int) -> str:
    """What a message adds when ``--pseudo-max`` cut the test set to the ``labelled`` images: which draw they are."""
    return f" (a --pseudo-max sample drawn with --seed {p.seed})" if 0 < p.pseudo_max == labelled else ""


def labelling_tta(p, scale: float = 1.0) -> str:
    """The TTA that labels: ``--tta`` where the user fixed one, else hflip (what auto chooses on Carvana); at
    ``scale`` alone where the run trained at --small-scale up to then (``--large-epochs``)."""
    mode = tta.fixed(p.tta if p.tta != "auto" else "hflip", p.tta_scales)
    return mode if scale == 1.0 else tta.with_scales(tta.split(mode)[0], (scale,))


@dataclass
class Labelled:
    images: np.ndarray  # (M, H, W, C) at the network size, the cache's dtype
    masks: np.ndarray  # (M, H, W) uint8 in the cache's mask form (binary 0/255, class labels, label bits)
    digest: str  # the model that labelled them

    def __len__(self) -> int:
        return len(self.images)


@torch.no_grad()
def label(model: torch.nn.Module, paths: list[Path], p, task: Task, fmt: ImageFormat, device: torch.device,
          precision, channels_last: bool, digest: str, show: bool = True, scale: float = 1.0) -> Labelled:
    """Every image of ``paths`` read at the network size and labelled by ``model`` (eval mode), predicting at
    ``scale`` (``labelling_tta``)."""
    model.eval()
    mode, post = labelling_tta(p, scale), p.postprocess if p.postprocess != "auto" else postprocess.NONE
    images, masks = [], []
    batch = max(1, p.predict_batch_size)
    for start in progress(range(0, len(paths), batch), "labelling the test images", disable=not show):
        chunk = np.stack([load_net_image(path, p.height, p.width, fmt)[0] for path in paths[start:start + batch]])
        x = torch.from_numpy(chunk).permute(0, 3, 1, 2).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            prob = tta.predict_proba(model, x, mode, task)
        images.append(chunk)
        masks.append(task.pseudo_mask(task.to_maps(prob.cpu()), post if task.binary else postprocess.NONE))
    return Labelled(np.concatenate(images), np.concatenate(masks), digest)


def save(folder: Path, labelled: Labelled) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, images=labelled.images, masks=labelled.masks, digest=np.array(labelled.digest))
    files.write_bytes_atomic(folder / FILE, buffer.getvalue())


def load(folder: Path, shape: tuple[int, ...], advice: str) -> Labelled:
    """The run's pseudo.npz, checked against the images' ``shape`` (M, H, W, C)."""
    path = folder / FILE
    try:
        with np.load(path) as z:
            found = Labelled(z["images"], z["masks"], str(z["digest"]))
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise PipelineError(f"{path}: unreadable ({type(e).__name__}); {advice}") from None
    if found.images.shape != shape or found.masks.shape != shape[:3] or found.masks.dtype != np.uint8:
        raise PipelineError(f"{path}: holds {found.images.shape[0]} images of {found.images.shape[1:]} with masks "
                            f"{found.masks.shape}, this run labels {shape[0]} of {shape[1:]}; {advice}")
    return found


class MixedSet(Dataset):
    """Rows 0..N-1: the training set's (a TrainSet over the cache); rows N..N+M-1: the labelled test photos, with
    the same augmentation."""

    def __init__(self, train_set, labelled: Labelled, transform=None):
        self.train_set, self.labelled, self.transform = train_set, labelled, transform
        self.first = len(train_set)

    def __len__(self) -> int:
        return self.first + len(self.labelled)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        row, seed = item
        if row < self.first:
            return self.train_set[item]
        return as_item(self.labelled.images[row - self.first], self.labelled.masks[row - self.first], self.transform,
                       seed)
