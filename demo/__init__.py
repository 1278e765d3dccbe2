"""Synthetic demo data in the Kaggle layout (the real images cannot be shipped), for ``01_prepare.py --demo``.

    cars.py     --demo-kind cars: Carvana-like turntable photos of 16 views per car, binary GIF masks
    scenes.py   --demo-kind multiclass: aerial scenes cut into tiles, label PNGs of 5 classes
    aerial.py   --demo-kind aerial-large: large aerial photos with thin fences and small poles, label PNGs of 4 classes
    labels.py   --demo-kind multilabel: photos with 3 overlapping labels (--classes 3 --multilabel), instance folders
    micro.py    --demo-kind micro16: 16-bit one-channel microscopy fields with dim cells, binary PNG masks

Data for demos and tests is not pipeline code: this package sits beside ``lib/``, uses it, and no stage needs it
except 01's ``--demo``, which calls ``write``.
"""
from __future__ import annotations

import shutil
import time
from typing import TYPE_CHECKING

from lib import files
from lib.errors import PipelineError

if TYPE_CHECKING:
    from params import Params

MARKER = "DEMO"  # written beside generated demo data, so --force never deletes real data
TOP_FILES = ("train_masks.csv", "metadata.csv", "sample_submission.csv", "classes.csv")  # either kind's


def marker_text(kind: str) -> str:
    """The marker's text: says which --demo-kind wrote the data (cars: the text it always had)."""
    return "synthetic demo data written by 01_prepare.py --demo" + ("" if kind == "cars" else f" --demo-kind {kind}")


SIZES = {"cars": (1918, 1280), "multiclass": (1918, 1280), "aerial-large": (6000, 4000), "multilabel": (480, 320),
         "micro16": (384, 256)}  # each kind's (width, height) when --demo-width/--demo-height are 0


def size(p: Params) -> tuple[int, int]:
    """(width, height) of the demo's images: --demo-width/--demo-height, or the kind's own where they are 0."""
    width, height = SIZES[p.demo_kind]
    return p.demo_width or width, p.demo_height or height


def write(p: Params) -> None:
    """Generate the synthetic demo data of --demo-kind into --input (never over data that is not the demo's)."""
    root, marker = p.input_dir, p.input_dir / MARKER
    has_data = (root / files.TRAIN).is_dir() and any((root / files.TRAIN).iterdir())
    if has_data and not marker.exists():
        raise PipelineError(f"{root}: holds data that is not the demo; give --demo another --input")
    if has_data and not p.force:
        if marker.read_text().strip() != marker_text(p.demo_kind):
            raise PipelineError(f"{root}: holds demo data of another --demo-kind ({marker.read_text().strip()}); "
                                "--force replaces it, or give another --input")
        print(f"demo data already in {root} (--force regenerates it)")
        return
    if has_data:  # --force on earlier demo data: clear it so another seed, size or kind starts clean
        marker.unlink()
        for name in (files.TRAIN, files.TRAIN_MASKS, files.TEST, files.TEST_MASKS):
            shutil.rmtree(root / name, ignore_errors=True)
        for name in TOP_FILES:
            (root / name).unlink(missing_ok=True)
    start, (width, height) = time.perf_counter(), size(p)
    if p.demo_kind == "aerial-large":
        from demo import aerial
        aerial.generate(root, p.demo_train_cars, p.demo_test_cars, width, height, p.seed, p.workers)
        what = f"{p.demo_train_cars} train + {p.demo_test_cars} test photos"
    elif p.demo_kind == "multilabel":
        from demo import labels
        labels.generate(root, p.demo_train_cars, p.demo_test_cars, width, height, p.seed)
        what = f"{p.demo_train_cars} train + {p.demo_test_cars} test photos with overlapping labels"
    elif p.demo_kind == "micro16":
        from demo import micro
        micro.generate(root, p.demo_train_cars, p.demo_test_cars, width, height, p.seed)
        what = f"{p.demo_train_cars} train + {p.demo_test_cars} test 16-bit fields"
    elif p.demo_kind == "multiclass":
        from demo import scenes
        scenes.generate(root, p.demo_train_cars, p.demo_test_cars, width, height, p.seed, p.workers)
        what = f"{p.demo_train_cars} train + {p.demo_test_cars} test scenes ({scenes.TILES} tiles each)"
    else:
        from demo import cars
        cars.generate(root, p.demo_train_cars, p.demo_test_cars, width, height, p.seed, p.workers)
        what = f"{p.demo_train_cars} train + {p.demo_test_cars} test cars"
    files.write_text_atomic(marker, marker_text(p.demo_kind) + "\n")
    print(f"demo data: {what} at {width}x{height} in {root} ({time.perf_counter() - start:.1f}s)")
