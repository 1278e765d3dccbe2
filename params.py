"""Every setting of the pipeline, in one typed dataclass, plus named presets.

Defaults are for the real full-resolution GPU run (1918 x 1280 padded to 1920 x 1280).
Presets are named sets of overrides; command-line flags override the preset.

    python 02_train.py --preset demo --fold 0 --epochs 3
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import json
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from lib.invocation import invocation, suggested, usage


STAGES = ("01", "02", "03", "04", "05")  # the numbered scripts, by the first two characters of their names


class Range(typing.NamedTuple):
    """The values a number setting may take: ``low``..``high`` (None: no bound), each end included or not."""
    low: float | None
    high: float | None
    low_included: bool
    high_included: bool

    def problem(self, name: str, value: float) -> str | None:
        """Why ``value`` is outside this range, in the words of flag ``--name``, or None."""
        flag = "--" + name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            return f"{flag} {value} must be a finite number"
        low, high = self.low, self.high
        too_low = low is not None and (value < low if self.low_included else value <= low)
        too_high = high is not None and (value > high if self.high_included else value >= high)
        if not (too_low or too_high):
            return None
        left = ("[" if self.low_included else "(") + str(low)
        right = str(high if high is not None else "inf") + ("]" if self.high_included else ")")
        return f"{flag} {value} must be in {left}, {right}"


@dataclass(frozen=True)
class Setting:
    """The facts about one Params field besides its default and type: every --help, check and resume rule reads
    them here."""
    help: str  # what it does, shown by --help
    stages: frozenset[str]  # the stages that read it: their --help shows it, and 02 --resume checks it if "02" is one
    choices: tuple[str, ...] = ()  # the values it may take (empty: any of its type)
    range: Range | None = None  # numbers: the values it may take
    resumable: bool = False  # read by 02, yet 02 --resume may change it: where and how fast it runs, not what it learns


class Section:
    """A "# --- title ---" block of Params: builds its fields, whose settings the stages ``stages`` read unless a
    field names its own."""

    def __init__(self, stages: str):
        self.stages = stages

    def __call__(self, default: typing.Any, help: str, *, stages: str | None = None, choices: tuple[str, ...] = (),
                 low: float | None = None, above: float | None = None, high: float | None = None,
                 below: float | None = None, resumable: bool = False) -> typing.Any:
        """A dataclass field with ``default`` and its Setting: ``low``/``high`` are included bounds, ``above``/
        ``below`` excluded ones."""
        read_by = frozenset((stages or self.stages).split())
        if not read_by <= set(STAGES) or (resumable and "02" not in read_by) or \
                (low is not None and above is not None) or (high is not None and below is not None):
            raise ValueError(f"setting {help!r}: stages must be among {', '.join(STAGES)}; only one a 02 reads can be "
                             "resumable; give each bound once (low or above, high or below)")
        bounds = (low, above, high, below)
        numbers = None if bounds == (None,) * 4 else Range(
            above if low is None else low, below if high is None else high, above is None, below is None)
        return dataclasses.field(default=default, metadata={"setting": Setting(help, read_by, choices, numbers,
                                                                               resumable)})


# The blocks of Params, by the stages that read their settings.
_EVERY = Section("01 02 03 04")
_PREPARE = Section("01")
_SIZE = Section("01 02")
_TRAIN = Section("02")
_HARDWARE = Section("02 03")
_OUTPUT = Section("03 04")
_TILES = Section("03")


@dataclass
class Params:
    """Every setting: its type and default, and beside them its Setting (``SETTINGS``), one field each."""

    # --- where things are ---
    input: str = _EVERY("input", "data folder in the Kaggle layout (train/, train_masks/, test/, ...)",
                        stages="01 02 03 04 05", resumable=True)
    output: str = _EVERY("output", "results folder: folds.csv, cache/, one folder per experiment",
                         stages="01 02 03 04 05", resumable=True)
    experiment: str = _EVERY("unet_resnet34_1280", "run folder name under output/", stages="01 02 03 04 05")
    seed: int = _EVERY(42, "seeds the split, the demo data, training and augmentation", stages="01 02",
                       low=0, high=2**32 - 1)
    max_image_mp: float = _EVERY(100.0, "largest image read, in megapixels (images are decoded whole; a larger one "
                                 "is refused, naming it: raise this where memory allows)", stages="01 02 03 04 05",
                                 above=0, resumable=True)
    mask_suffix: str = _EVERY("", "mask of image <id>: train_masks/<id><suffix>.<png|gif|tif|bmp>, or a folder "
                              "<id><suffix>/ of instance masks (merged); empty = auto: \"_mask\" (Carvana's), else "
                              "no suffix")

    # --- the task ---
    classes: int = _EVERY(1, "1: binary masks (Carvana); C >= 2: a label 0..C-1 per pixel, class 0 the background",
                          low=1, high=255)
    multilabel: bool = _EVERY(False, "overlapping labels (clouds, steel defects, organs): --classes C labels, a "
                              "sigmoid each, no background; masks are instance folders <id>/<n>__<label>.png")
    class_colors: str = _EVERY("", "multi-class: CSV of name,r,g,b per class in class order (names; RGB colour "
                               "masks map through it)")
    class_names: str = _EVERY("", "multi-class without --class-colors: names of the C classes, comma-separated "
                              "(default class0, ...)")

    # --- 01_prepare ---
    demo: bool = _PREPARE(False, "generate the synthetic demo dataset into --input first")
    demo_kind: str = _PREPARE("cars", "demo data: cars (Carvana-like, one class) | multiclass (aerial scenes, 5 "
                              "classes) | aerial-large (large photos with 2-3 px fences and small poles, 4 classes: "
                              "for --tile-size; 6000 x 4000 unless --demo-width/--demo-height say otherwise) | "
                              "multilabel (3 "
                              "overlapping labels, some photos with none: give --classes 3 --multilabel) | micro16 "
                              "(16-bit one-channel microscopy, one class; --demo-train-cars fields)",
                              choices=("cars", "multiclass", "aerial-large", "multilabel", "micro16"))
    demo_train_cars: int = _PREPARE(16, "demo: cars with masks (16 views each); --demo-kind multiclass: scenes (16 "
                                    "tiles each)", low=2)
    demo_test_cars: int = _PREPARE(4, "demo: cars (multiclass: scenes) in test/ (truth in test_masks/)", low=0)
    demo_width: int = _PREPARE(0, "demo image width; 0: the kind's own (cars, multiclass 1918; aerial-large 6000; "
                               "multilabel 480; micro16 384)", low=0)
    demo_height: int = _PREPARE(0, "demo image height; 0: the kind's own (cars, multiclass 1280; aerial-large 4000; "
                                "multilabel 320; micro16 256)", low=0)
    n_folds: int = _PREPARE(5, "K of the car-grouped K-fold split", low=2)
    group_regex: str = _PREPARE("", "folds keep together the ids sharing this regex's first capture group (e.g. "
                                "\"^(patient\\d+)_\"); empty = Carvana's <car>_<NN> when every id has that form, "
                                "else one group per image")
    force: bool = _PREPARE(False, "01: replace an existing different split / demo data")
    workers: int = _PREPARE(8, "worker processes for data loading, caching and RLE, at most the CPU count (8 "
                            "decode 116 full-size training images/s on an H200 machine's CPUs, enough for the compiled "
                            "model's 87: results/gpu.md)", stages="01 02 03 04", low=0, resumable=True)
    cache: str = _PREPARE("auto", "network-size image cache: auto (on when it fits --cache-budget-gb) | on | off "
                          "(decode in workers)", stages="01 02 03", choices=("auto", "on", "off"), resumable=True)
    cache_budget_gb: float = _PREPARE(2.0, "--cache auto keeps the image cache up to this size (5088 images at "
                                      "128x192: 0.5 GB)", stages="01 02 03", low=0, resumable=True)
    lock_timeout: float = _PREPARE(1800.0, "seconds a stage waits for output/cache/.lock while another process builds "
                                   "the cache (it says who, and since when) before giving up with an error naming the "
                                   "holder; 0 = do not wait. A build of the 5088 training images takes minutes",
                                   stages="01 02 03 04", low=0, resumable=True)

    # --- model ---
    arch: str = _TRAIN("Unet", "segmentation_models_pytorch architecture (Unet, UnetPlusPlus, FPN, ...)")
    encoder: str = _TRAIN("resnet34", "any encoder smp knows: resnet34, efficientnet-b4, tu-convnext_tiny (timm), "
                          "...; slow to train from scratch on a CPU (images/s against resnet18's at the cpu preset's "
                          "size, bf16): efficientnet-b4 about 1/5, resnet50 and tu-convnext_tiny about 1/3, resnet34 "
                          "and efficientnet-b0 2/3-3/4; mobilenet_v2 and tu-regnety_002 are faster "
                          "(benchmarks/results/encoders.md)")
    encoder_weights: str = _TRAIN("imagenet", "pretrained weights smp knows for the encoder (imagenet, ssl, ...; "
                                  "downloaded once), or none")
    decoder_channels: str = _TRAIN("256,128,64,32,16", "Unet/UnetPlusPlus decoder widths, deepest first (5 values)")

    # --- input size: training and inference run at height x width, both multiples of 32 ---
    height: int = _SIZE(1280, "network input height (1280: Carvana's full height)")
    width: int = _SIZE(1920, "network input width (1920: Carvana's 1918 padded by 1 px each side; other sizes "
                       "resize)")

    # --- training ---
    crop_height: int = _TRAIN(0, "train on random crops of this height of the height x width image (multiple of 32; "
                              "0 = whole image); validation and inference always see whole images. Crops give the "
                              "boundary detail of a larger input at the training cost of a smaller one "
                              "(results/recipes.md)")
    crop_width: int = _TRAIN(0, "the crops' width (multiple of 32; 0 = whole image)")
    epochs: int = _TRAIN(40, "maximum epochs", low=1)
    full_epochs: int = _TRAIN(0, "epochs of 02 --fold full's model (fitted on every training image, no validation); "
                              "0: --epochs; an --epochs on the command line wins", low=0)
    pseudo_epochs: int = _TRAIN(0, "pseudo-labels (lib/pseudo.py): after --epochs, label the test images (input/test) "
                                "with the run's own weights at the network size (--tta where fixed, else hflip; "
                                "threshold 0.5 after --postprocess where fixed) and train this many more epochs on "
                                "the training images and those labels, under a second warm-up and cosine at "
                                "--pseudo-lr x --lr. No validation image's truth is used. 0 = off; without test "
                                "images the run trains its --epochs alone and says so", low=0)
    pseudo_max: int = _TRAIN(0, "the most test images --pseudo-epochs labels: a sample of this many drawn with --seed "
                             "(each is held in memory and in pseudo.npz at the network size: 9.8 MB at 1280x1920); "
                             "0 = every test image", low=0)
    full_pseudo_epochs: int = _TRAIN(-1, "--pseudo-epochs of 02 --fold full's model; -1: --pseudo-epochs; a "
                                     "--pseudo-epochs on the command line wins", low=-1)
    large_epochs: int = _TRAIN(0, "progressive resizing: the run's last this many epochs (counting --pseudo-epochs) "
                               "train on --height x --width images, every epoch before on them shrunk by "
                               "--small-scale (each side rounded to a multiple of 32), 4x cheaper at 0.5; test "
                               "images are labelled at the size the run trained at last. 0 = off: every epoch at "
                               "--height x --width", low=0)
    small_scale: float = _TRAIN(0.5, "the shrink of the epochs before --large-epochs", above=0, high=1)
    time_budget: float = _TRAIN(0.0, "minutes one model's epochs may take on this machine (lib/budget.py): the run times "
                                "a few steps of its own and, where the epochs would take longer, trains fewer: "
                                "--pseudo-epochs first (down to half, then none), then --epochs and --large-epochs "
                                "by one factor; the line it prints says which. Labelling counts, validation and the "
                                "other stages do not. --resume keeps the plan; --resume --epochs N extends it. 0 = "
                                "off: every epoch", low=0)
    full_time_budget: float = _TRAIN(-1.0, "--time-budget of 02 --fold full's model; -1: --time-budget; a "
                                     "--time-budget on the command line wins", low=-1)
    large_lr: float = _TRAIN(0.5, "peak learning rate of the --large-epochs, as a fraction of --lr: they warm up and "
                             "follow a cosine of their own (the schedule before them ends where they start); 0: "
                             "they go on along the schedule as it is", low=0, high=1)
    pseudo_lr: float = _TRAIN(0.5, "peak learning rate of the pseudo-label epochs, as a fraction of --lr", above=0,
                              high=1)
    batch_size: int = _TRAIN(8, "images per optimiser step (before accumulation); 8 at 1280x1920: 18.5 GiB, +10% "
                             "images/s over 4", low=1)
    accum_steps: int = _TRAIN(1, "gradient accumulation steps", low=1)
    optimizer: str = _TRAIN("adamw", "adam | adamw", choices=("adam", "adamw"))
    lr: float = _TRAIN(3e-4, "peak learning rate", above=0)
    weight_decay: float = _TRAIN(1e-4, "AdamW weight decay", low=0)
    warmup_epochs: float = _TRAIN(1.0, "linear warm-up, then cosine decay to lr * min_lr_ratio", low=0)
    min_lr_ratio: float = _TRAIN(0.01, "final learning rate as a fraction of lr", low=0, high=1)
    grad_clip: float = _TRAIN(1.0, "max gradient norm (0 = no clipping)", low=0)
    ema: float = _TRAIN(0.0, "exponential moving average of the weights, updated every optimiser step with this "
                        "decay (e.g. 0.995: an average over about the last 200 steps); it validates, is model.pt "
                        "and predicts, and log.csv keeps the weights' own val Dice beside it (val_dice_raw). 0 = off",
                        low=0, below=1)
    patience: int = _TRAIN(10, "early stopping: epochs without val Dice improvement (0 = off)", low=0)
    loss: str = _TRAIN("bce_dice", "training loss, smp's (lib/losses.py): bce_dice (BCE, or cross-entropy for "
                       "classes, + soft Dice: Carvana's) | focal_dice (focal + soft Dice) | lovasz (BCE/CE + Lovasz "
                       "hinge/softmax) | tversky (BCE/CE + Tversky, alpha 0.3 on false positives, beta 0.7 on false "
                       "negatives)", choices=("bce_dice", "focal_dice", "lovasz", "tversky"))
    bce_weight: float = _TRAIN(1.0, "loss = bce_weight * pixel term (BCE, cross-entropy or focal) + dice_weight * "
                               "region term (soft Dice, Lovasz or Tversky); 0 drops the pixel term", low=0)
    dice_weight: float = _TRAIN(1.0, "weight of the region term of the loss (soft Dice, Lovasz or Tversky)", low=0)
    augment: bool = _TRAIN(True, "hflip + shift/scale/rotate + HSV, jointly on image and mask")
    hflip_p: float = _TRAIN(0.5, "probability of a horizontal flip", low=0, high=1)
    shift_scale_rotate_p: float = _TRAIN(0.5, "probability of a shift/scale/rotate (affine) change", low=0, high=1)
    scale_low: float = _TRAIN(0.7, "affine: smallest zoom factor (below 1 the photo shrinks inside a border: a camera "
                              "further away; with --border constant it taught the models the dark-floor car: "
                              "results/recipes.md)", above=0)
    scale_high: float = _TRAIN(1.1, "affine: largest zoom factor", above=0)
    translate: float = _TRAIN(0.08, "affine: largest shift, as a fraction of the width and of the height", low=0,
                              high=0.5)
    border: str = _TRAIN("constant", "affine: what fills the uncovered border: constant (black; background in the "
                         "mask) | reflect (the mirrored photo)", choices=("reflect", "constant"))
    color_p: float = _TRAIN(0.5, "probability of a hue/saturation/value or brightness/contrast change", low=0, high=1)
    val_every: int = _TRAIN(1, "validate every N epochs (and always at the last)", low=1)
    tensorboard: bool = _TRAIN(False, "also log to output/<experiment>/tensorboard/ (losses, lr, val Dice, overlays; "
                               "pip install tensorboard)", resumable=True)

    # --- hardware ---
    device: str = _HARDWARE("auto", "auto | cpu | cuda | cuda:N", stages="02 03 05", resumable=True)
    amp: str = _HARDWARE("auto", "mixed precision: auto (GPU: bf16 where supported, else fp16 + scaler; CPU: bf16 "
                         "where it has AMX or AVX512-BF16, else off) | bf16 | fp16 | off", choices=("auto", "bf16", "fp16", "off"))
    sync_bn: bool = _HARDWARE(False, "under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm), not "
                              "per rank")
    channels_last: bool = _HARDWARE(True, "NHWC memory format (faster convolutions on GPU and on CPU)")
    compile: str = _HARDWARE("auto", "torch.compile the training model: auto (on GPU: +35% images/s, ~1.5 min to "
                             "compile) | on | off", choices=("auto", "on", "off"), resumable=True)
    jobs: int = _HARDWARE(1, "02 --fold all: folds trained side by side, one process each with its share of the "
                          "cores (on a 2-core CPU, 2 single-threaded folds at once beat one 2-thread process: "
                          "results/recipes.md)", stages="02", low=1, resumable=True)
    threads: int = _HARDWARE(0, "torch CPU threads per process (0 = torch's default, one per core; give cores / "
                             "processes when several share them)", stages="02 03 05", low=0, resumable=True)

    # --- large images: tiles at the image's own scale (lib/tiles.py, lib/tilecache.py) ---
    tile_size: int = _TILES(0, "large images by tiles of this side at the network's scale (a multiple of 32) instead of "
                            "resizing each image to --height x --width: 01 caches the images at 1/--downscale scale, 02 "
                            "trains on random tiles and validates whole images by sliding window, 03 predicts "
                            "out-of-fold, test and --images maps by sliding window (blended where tiles overlap), each "
                            "map stored at its image's size shrunk by --downscale; 0 = off (whole images)",
                            stages="01 02 03", low=0)
    downscale: float = _TILES(1.0, "with --tile-size: images are shrunk by this factor first (1 = their own "
                              "resolution, 2 = half each side)", stages="01 02 03", low=1)
    tile_overlap: float = _TILES(0.25, "with --tile-size: neighbouring sliding-window tiles share at least this "
                                 "fraction of a tile (02's validation, 03)", stages="02 03", low=0, high=0.5)
    tile_foreground: float = _TILES(0.5, "with --tile-size: the fraction of training tiles centred on a foreground "
                                    "pixel (each class the image holds equally often), the rest placed uniformly: "
                                    "sparse masks and rare classes are seen more often", stages="02", low=0, high=1)

    # --- 03_predict / 04_submit ---
    tta: str = _OUTPUT("auto", "test-time augmentation (lib/tta.py): auto (the best of --tta-modes on out-of-fold Dice) "
                       "| none | hflip | vflip | hvflip (both flips and the 180-degree rotation: 4 passes) | d4 (the 8 "
                       "rotations by 90 degrees and their mirrors: square inputs only, --height == --width; on a "
                       "non-square input a 90-degree turn would change its shape, so auto leaves d4 out there)",
                       stages="03 05", choices=("auto", "none", "hflip", "vflip", "hvflip", "d4"))
    tta_modes: str = _OUTPUT("none,hflip", "--tta auto chooses among these, comma-separated, simplest first (ties go "
                             "to the earlier); each costs one pass over the out-of-fold images (d4: 8 predictions an "
                             "image). Cars are not symmetric up/down; aerial or medical data may add vflip,hvflip,d4",
                             stages="03")
    gating: str = _OUTPUT("auto", "auto (a mask smaller than a minimum area is emptied, the area tuned out-of-fold "
                          "jointly with the threshold and post-processing: lib/metrics.gate; multi-class: a class "
                          "smaller than its own minimum area becomes background; multi-label: per label) | off "
                          "(minimum area 0, not searched); tuning.json records it, so a change tunes again",
                          stages="03", choices=("auto", "off"))
    tta_scales: str = _OUTPUT("1", "multi-scale TTA (lib/tta.py): the network input is also resized by each of these "
                              "comma-separated scales (each side rounded to the nearest multiple of 32, at least 32; "
                              "with --tile-size the tile), each prediction resized back and averaged with the flips: "
                              "e.g. 0.75,1,1.25 (3 times the passes); --tta auto tries each of --tta-modes at scale 1 "
                              "and at these; 1 = off", stages="03 05")
    threshold: float = _OUTPUT(0.0, "0 = use the tuned threshold; else a fixed one in (0, 1)", stages="03 04 05")
    postprocess: str = _OUTPUT("auto", "binary masks: auto (keep only each mask's largest region where that scores "
                               "better out-of-fold: lib/postprocess.py) | largest | none",
                               stages="03 04 05", choices=("auto", "none", "largest"))
    display_bands: str = _OUTPUT("1,2,3", "images of more than 3 bands (lib/imageformat.py): the bands shown as red, "
                                 "green, blue in overlays, 1-based, e.g. 3,2,1 (16-bit bands are stretched between "
                                 "their 1st and 99th percentiles; one band is shown grey)", stages="03")
    predict_batch_size: int = _OUTPUT(8, "images per inference batch", stages="02 03", low=1, resumable=True)
    submission: str = _OUTPUT("submission", "file name (without .csv.gz) under the experiment folder", stages="04")
    rle_order: str = _OUTPUT("row", "pixel order of run-length codes in submissions, train_masks.csv and train.csv: "
                             "row (Carvana: left to right, then down) | column (top to bottom, then right; Kaggle's "
                             "per-class forms, Severstal's and Clouds', need it)",
                             stages="01 03 04", choices=("row", "column"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def input_dir(self) -> Path:
        return Path(self.input)

    @property
    def output_dir(self) -> Path:
        return Path(self.output)


# Each setting's facts (Params' field metadata), by field name.
SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(Params)}

PRESETS: dict[str, dict] = {
    # Full resolution on one GPU (the Kaggle winners' recipe, one model per fold).
    "full": {},
    # The built-in demo: small, quick, CPU, synthetic data.
    "demo": dict(
        experiment="demo", encoder="resnet18", encoder_weights="none", decoder_channels="128,64,32,16,16",
        height=96, width=160, n_folds=2, epochs=10, val_every=3, batch_size=8, lr=3e-3,
        warmup_epochs=0.5, patience=0, workers=2, predict_batch_size=16, shift_scale_rotate_p=0.3, jobs=2,
    ),
    # Real data on a 2-core CPU (../shared/carvana_sample, 32 cars): one model on every car (02 --fold full) in
    # under 20 minutes: 29 epochs at 160 x 224 (the 320 x 448 input shrunk by half), the test photos labelled by it,
    # 8 epochs on training + labelled photos, the last 3 at 320 x 448, on along the schedule; each mask keeps its
    # largest region; batches of 4 (twice the steps of 8 for 10% fewer images a second). Epochs and post-processing
    # were chosen by cross-validation at 160 x 224 (the epochs on a GPU over several seeds), pseudo-labels, the large
    # epochs and the batch on held-out cars (benchmarks/results/recipes.md). On a
    # CPU too slow for all of them in 16 minutes the full model trains fewer (--full-time-budget, lib/budget.py), so
    # the four stages stay within 20.
    "cpu": dict(
        experiment="cpu_resnet18_320", encoder="resnet18", encoder_weights="none", decoder_channels="128,64,32,16,16",
        height=320, width=448, large_epochs=3, small_scale=0.5, large_lr=0.0, n_folds=4, epochs=42, full_epochs=29,
        full_pseudo_epochs=8, full_time_budget=16.0, val_every=21, batch_size=4, lr=2e-3, warmup_epochs=0.5, patience=0, workers=2,
        predict_batch_size=16, jobs=2, postprocess="largest",
    ),
}

PRESET_DOCS = {"full": "the defaults, full resolution on a GPU", "demo": "the synthetic demo on a CPU",
               "cpu": "the real 32-car sample on a 2-core CPU"}


def _flag_type(f: dataclasses.Field):
    hint = typing.get_type_hints(Params)[f.name]
    if hint is bool:
        return bool
    if hint in (int, float, str):
        return hint
    raise TypeError(f"params field {f.name}: unsupported type {hint}")


def _help_text(f: dataclasses.Field) -> str:
    shown = "on" if f.default is True else "off" if f.default is False else "empty" if f.default == "" else f.default
    extras = [f"default {shown}"]
    presets = [f"{name} {v}" for name, values in PRESETS.items() if (v := values.get(f.name)) is not None]
    if presets:
        extras.append("--preset " + ", ".join(presets))
    setting = SETTINGS[f.name]
    if setting.choices:
        extras.append("choices " + " | ".join(setting.choices))
    return f"{setting.help} ({'; '.join(extras)})".replace("%", "%%")


def add_param_flags(parser: argparse.ArgumentParser, stage: str | None = None, script: str | None = None) -> None:
    """One --flag per Params field (bools as --x/--no-x), plus --preset. With ``stage`` ("01".."05"), --help lists
    the settings that stage uses, with description, default, preset values and choices; the others are accepted
    and hidden."""
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="a named set of settings; flags given beside it win (" + "; ".join(
                            f"{k}: {v}" for k, v in PRESET_DOCS.items()) + ")")
    group = parser.add_argument_group(f"settings {script} uses (params.py)" if script else "settings (params.py)")
    for f in fields(Params):
        kind = _flag_type(f)
        flag = "--" + f.name.replace("_", "-")
        shown = stage is None or stage in SETTINGS[f.name].stages
        text = _help_text(f) if shown else argparse.SUPPRESS
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=None, choices=SETTINGS[f.name].choices or None,
                               metavar=kind.__name__.upper(), help=text)


DECODER_ARCHS = ("Unet", "UnetPlusPlus")  # the architectures --decoder-channels applies to


def params_from_args(args: argparse.Namespace) -> Params:
    """Defaults <- preset <- explicit flags."""
    values = dict(PRESETS[args.preset]) if args.preset else {}
    explicit = {f.name for f in fields(Params) if getattr(args, f.name, None) is not None}
    for name in explicit:
        values[name] = getattr(args, name)
    if values.get("arch", Params.arch).lower() not in {a.lower() for a in DECODER_ARCHS} and \
            "decoder_channels" not in explicit:
        values.pop("decoder_channels", None)  # the preset's Unet widths do not apply to this --arch
    return make_params(**values)


def make_params(**overrides) -> Params:
    """Build Params from keyword overrides, rejecting unknown keys and wrong types."""
    known = {f.name: f for f in fields(Params)}
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
        kind = _flag_type(known[key])
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            overrides[key] = float(value)
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"setting {key!r} must be {kind.__name__}, got {value!r}")
    p = Params(**overrides)
    check(p)
    return p


def full_model(p: Params) -> Params:
    """``p`` for 02 --fold full's model: --full-epochs epochs where it is set and --epochs was not on the command
    line (the cpu preset knows its full model's epochs: the README's run needs no --epochs); likewise
    --full-pseudo-epochs and --full-time-budget."""
    if p.full_epochs and "epochs" not in GIVEN:
        p = dataclasses.replace(p, epochs=p.full_epochs)
    if p.full_pseudo_epochs >= 0 and "pseudo_epochs" not in GIVEN:
        p = dataclasses.replace(p, pseudo_epochs=p.full_pseudo_epochs)
    if p.full_time_budget >= 0 and "time_budget" not in GIVEN:
        p = dataclasses.replace(p, time_budget=p.full_time_budget)
    return p


def train_size(p: Params) -> tuple[int, int]:
    """Height and width of a training batch: the --tile-size tile, else the --crop-height x --crop-width crop, else
    --height x --width."""
    if p.tile_size:
        return p.tile_size, p.tile_size
    return p.crop_height or p.height, p.crop_width or p.width


def check(p: Params) -> None:
    """Reject settings that cannot work, with the reason."""
    problems = [msg for name, s in SETTINGS.items() if s.range and (msg := s.range.problem(name, getattr(p, name)))]
    for name in ("height", "width"):
        v = getattr(p, name)
        if v <= 0 or v % 32:
            problems.append(f"--{name} {v} must be a positive multiple of 32")
    for name in ("demo_width", "demo_height"):
        if 0 < getattr(p, name) < 32:
            problems.append(f"--{name.replace('_', '-')} {getattr(p, name)} must be 0 (the demo kind's own) or "
                            "at least 32")
    if p.tile_size % 32:
        problems.append(f"--tile-size {p.tile_size} must be 0 (off) or a positive multiple of 32")
    batch = train_size(p)  # what --small-scale shrinks: the crop or tile where there is one (lib.tta.scaled_size)
    if p.large_epochs and min(round(side * p.small_scale / 32) * 32 for side in batch) < 32:
        problems.append(f"--small-scale {p.small_scale} shrinks the {batch[0]} x {batch[1]} training input below 32 px "
                        f"a side; raise it to at least {32 / min(batch):.3g}")
    if p.tile_size and (p.pseudo_epochs or p.full_pseudo_epochs > 0):
        problems.append("--pseudo-epochs labels whole test images at the network size; with --tile-size set "
                        "--pseudo-epochs 0 --full-pseudo-epochs 0")
    for name, whole in (("crop_height", p.height), ("crop_width", p.width)):
        v = getattr(p, name)
        if v and (v < 0 or v % 32 or v > whole):
            problems.append(f"--{name.replace('_', '-')} {v} must be 0 (whole image) or a positive multiple of 32 up "
                            f"to --{name[5:]} {whole}")
    if (p.crop_height or p.crop_width) and not p.augment:
        problems.append("--crop-height/--crop-width crop inside the augmentation, which --no-augment turns off: "
                        "leave out --no-augment or the crop flags")
    problems += [f"--{name.replace('_', '-')} {getattr(p, name)!r} must be one of {', '.join(s.choices)}"
                 for name, s in SETTINGS.items() if s.choices and getattr(p, name) not in s.choices]
    modes = [m.strip() for m in p.tta_modes.split(",") if m.strip()]
    if not modes or any(m not in SETTINGS["tta"].choices[1:] for m in modes):
        problems.append(f"--tta-modes {p.tta_modes!r} must list modes of "
                        f"{', '.join(SETTINGS['tta'].choices[1:])}, comma-separated")
    if p.tta_scales != "1":  # lib.tta brings torch: only for scales other than the default
        from lib.tta import parse_scales
        try:
            parse_scales(p.tta_scales)
        except ValueError as e:
            problems.append(f"--tta-scales {e}")
    if not 0.0 <= p.threshold < 1.0:  # also NaN
        problems.append(f"--threshold {p.threshold} must be in (0, 1), or 0 for the tuned one")
    if p.scale_low > p.scale_high:
        problems.append(f"--scale-low {p.scale_low} is above --scale-high {p.scale_high}")
    if p.bce_weight == 0 and p.dice_weight == 0:
        problems.append("--bce-weight and --dice-weight are both 0: the loss would be 0")
    if not p.encoder_weights.strip():
        problems.append("--encoder-weights must name weights smp knows for the encoder (e.g. imagenet), or none")
    try:
        widths = decoder_widths(p.decoder_channels)
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError
    except ValueError:
        problems.append(f"--decoder-channels {p.decoder_channels!r} must be 5 positive integers, e.g. 256,128,64,32,16")
    problems += [msg for name in ("experiment", "submission") if (msg := _name_problem(name, getattr(p, name)))]
    if any(c in p.mask_suffix for c in "/\\\0"):
        problems.append(f"--mask-suffix {p.mask_suffix!r} must be part of a file name (no / or \\)")
    if p.group_regex:
        import re
        try:
            if re.compile(p.group_regex).groups < 1:
                problems.append(f"--group-regex {p.group_regex!r} needs a capture group: the group id is its first "
                                "one, e.g. '^(patient\\d+)_'")
        except re.error as e:
            problems.append(f"--group-regex {p.group_regex!r} is not a regular expression ({e})")
    if problems:
        raise ValueError("; ".join(problems))


# Names the pipeline itself gives to things under --output (an experiment folder) and in a run folder (a submission
# stem): a setting that named one of them would make two outputs share a file.
RESERVED_EXPERIMENTS = ("cache", "folds.csv", "prepare_params.json")
RESERVED_SUBMISSIONS = ("baseline_global", "baseline_view", "baseline_majority")  # written by 04 --baselines


def _name_problem(name: str, value: str) -> str | None:
    """Why ``value`` cannot be the --experiment or --submission name (a folder or file stem inside --output), or None.

    Both become paths under --output: a separator, '..', an absolute path or a drive would lead outside it."""
    flag = "--" + name
    if not value or value in (".", "..") or value.startswith(".") or any(c in value for c in "/\\:\0") or \
            value != value.strip():
        return (f"{flag} {value!r} must be a plain name inside --output (no '/', '\\' or ':', not starting with "
                "'.', no surrounding spaces), e.g. my_run; to write elsewhere, give another --output")
    reserved = RESERVED_EXPERIMENTS if name == "experiment" else RESERVED_SUBMISSIONS
    if value in reserved or (name == "submission" and value.endswith((".csv", ".gz"))):
        what = "is a name the pipeline writes itself" if value in reserved else "must be a stem without .csv/.gz"
        return f"{flag} {value!r} {what} ({', '.join(reserved)} are taken): choose another name"
    return None


def decoder_widths(text: str) -> tuple[int, ...]:
    """'256,128,64,32,16' -> (256, 128, 64, 32, 16)."""
    return tuple(int(v) for v in text.split(","))


def fold_list(text: str) -> list[int]:
    """'0,2' -> [0, 2] (argparse type of 03's and 05's --folds)."""
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of fold numbers") from None
    if min(ks) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: fold numbers are >= 0")
    return ks


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors as one line (the usage block is what --help is for); exit status 2 as argparse's."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse(description: str, argv: list[str] | None = None,
          extra: typing.Callable[[argparse.ArgumentParser], None] | None = None, script: str | None = None
          ) -> tuple[Params, argparse.Namespace]:
    """Parse a script's command line: its own arguments (``extra``) and every Params field. ``script`` (its file
    name, e.g. "02_train.py") puts its own arguments first in --help and shows only the settings it uses."""
    import shlex
    stage = script[:2] if script else None
    epilog = ("Settings of the other stages are accepted too, and ignored here, so that one set of flags serves "
              f"every stage. All settings: {shlex.join(invocation('params.py'))}") if stage else None
    parser = OneLineParser(description=usage(description), formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False, epilog=epilog, prog=script)
    if extra is not None:
        extra(parser.add_argument_group(f"{script or 'this script'}") if script else parser)
    add_param_flags(parser, stage, script)
    args = parser.parse_args(argv)  # unknown flags: argparse exits 2 with the flag named
    try:
        p = params_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    import os
    os.environ[MAX_IMAGE_MP_ENV] = repr(p.max_image_mp)  # for lib.inputs in this process and every worker it starts
    GIVEN.clear()
    GIVEN.update({"preset": args.preset} if args.preset else {})
    GIVEN.update({f.name: getattr(args, f.name) for f in fields(Params) if getattr(args, f.name, None) is not None})
    RUN.clear()
    if script:  # its own arguments: the words of the command line that are not settings, in their order
        settings = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        add_param_flags(settings)
        RUN.update(script=script, args=settings.parse_known_args(argv)[1])
    return p, args


# The settings this process was given on its command line (--preset first), recorded by ``parse``: the advice of an
# error repeats them, so that the command it names runs as printed with the user's own flags.
GIVEN: dict = {}
MAX_IMAGE_MP_ENV = "PIPELINE_MAX_IMAGE_MP"  # --max-image-mp, as lib.inputs reads it in any process
# The script this process runs ("script") and its own arguments ("args", e.g. ["--fold", "0"]), recorded by ``parse``
# when it is given the script: ``rerun`` names the command that runs this process again.
RUN: dict = {}


def command(script: str, *args: str, drop: tuple[str, ...] = ()) -> str:
    """The command line that runs ``script`` (e.g. "02_train.py") with ``args`` and the settings this process was
    given (less the fields in ``drop`` and those ``args`` set), quoted for a POSIX shell and in backticks:
    `.venv/bin/python 02_train.py --fold 0 --restart --preset demo --input 'in put'`."""
    words = list(args)
    for name, value in GIVEN.items():
        if name in drop or "--" + name.replace("_", "-") in args:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value is False:
            words.append(f"--no-{name.replace('_', '-')}")
        else:
            words += [flag, str(value)]
    return suggested(script, words)


def rerun(*extra: str, drop: tuple[str, ...] = ()) -> str:
    """The command that runs this process again as the user gave it (``command`` of its script and own arguments),
    with ``extra`` arguments (a flag among them, a setting or the script's own such as ``--folds 0,1``, replaces the
    user's with its values): what an error advises once the process that held a lock has finished, or with the flag
    that lets it through (``--max-image-mp 180``, ``--overwrite``, the folds it can use); less the script's own flags
    ``drop`` ("--score")."""
    import sys
    script, args = (RUN["script"], RUN["args"]) if RUN else (Path(sys.argv[0]).name, [])
    return command(script, *without_flags(args, [*drop, *(a for a in extra if a.startswith("--"))]), *extra)


def without_flags(args: list[str], flags: list[str]) -> list[str]:
    """``args`` (a command line's words) less each of ``flags`` ("--folds") with the values after it (up to the next
    word that starts with "--"), and less ``--flag=value`` words: ['--folds', '0,1', '--retune'] less ['--folds'] ->
    ['--retune']."""
    kept, skipping = [], False
    for a in args:
        if a.startswith("--"):
            skipping = a in flags
            if skipping or a.split("=", 1)[0] in flags:
                continue
        elif skipping:
            continue
        kept.append(a)
    return kept


def save(p: Params, path: Path) -> None:
    from lib.files import write_text_atomic
    write_text_atomic(path, json.dumps(p.to_dict(), indent=2) + "\n")


def from_dict(d: dict) -> Params:
    """Params saved by an earlier run (e.g. inside a checkpoint); unknown keys are an error."""
    return make_params(**d)


if __name__ == "__main__":  # python params.py: every setting, with its description, default, presets and choices
    parse(__doc__, ["--help"])
