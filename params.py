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


@dataclass
class Params:
    # --- where things are ---
    input: str = "input"  # data folder in the Kaggle layout (train/, train_masks/, test/, ...)
    output: str = "output"  # results folder: folds.csv, cache/, one folder per experiment
    experiment: str = "unet_resnet34_1280"  # run folder name under output/
    seed: int = 42  # seeds the split, the demo data, training and augmentation
    max_image_mp: float = 100.0  # largest image read, in megapixels (images are decoded whole; a larger one is refused,
    #                              naming it: raise this where memory allows)
    mask_suffix: str = ""  # mask of image <id>: train_masks/<id><suffix>.<png|gif|tif|bmp>, or a folder <id><suffix>/ of
    #                        instance masks (merged); empty = auto: "_mask" (Carvana's), else no suffix

    # --- the task ---
    classes: int = 1  # 1: binary masks (Carvana); C >= 2: a label 0..C-1 per pixel, class 0 the background
    class_colors: str = ""  # multi-class: CSV of name,r,g,b per class in class order (names; RGB colour masks map through it)
    class_names: str = ""  # multi-class without --class-colors: names of the C classes, comma-separated (default class0, ...)

    # --- 01_prepare ---
    demo: bool = False  # generate the synthetic demo dataset into --input first
    demo_kind: str = "cars"  # demo data: cars (Carvana-like, one class) | multiclass (aerial scenes, 5 classes)
    demo_train_cars: int = 16  # demo: cars with masks (16 views each); --demo-kind multiclass: scenes (16 tiles each)
    demo_test_cars: int = 4  # demo: cars (multiclass: scenes) in test/ (truth in test_masks/)
    demo_width: int = 1918  # demo image width
    demo_height: int = 1280  # demo image height
    n_folds: int = 5  # K of the car-grouped K-fold split
    group_regex: str = ""  # folds keep together the ids sharing this regex's first capture group (e.g. "^(patient\d+)_");
    #                        empty = Carvana's <car>_<NN> when every id has that form, else one group per image
    force: bool = False  # 01: replace an existing different split / demo data
    workers: int = 8  # worker processes for data loading, caching and RLE, at most the CPU count (8 decode 116 full-size
    #                   training images/s on an H200 machine's CPUs, enough for the compiled model's 87: results/gpu.md)
    cache: str = "auto"  # network-size image cache: auto (on when it fits --cache-budget-gb) | on | off (decode in workers)
    cache_budget_gb: float = 2.0  # --cache auto keeps the image cache up to this size (5088 images at 128x192: 0.5 GB)
    lock_timeout: float = 1800.0  # seconds a stage waits for output/cache/.lock while another process builds the cache
    #                               (it says who, and since when) before giving up with an error naming the holder;
    #                               0 = do not wait. A build of the 5088 training images takes minutes

    # --- model ---
    arch: str = "Unet"  # segmentation_models_pytorch architecture (Unet, UnetPlusPlus, FPN, ...)
    encoder: str = "resnet34"  # any encoder smp knows: resnet34, efficientnet-b4, tu-convnext_tiny (timm), ...
    encoder_weights: str = "imagenet"  # pretrained weights smp knows for the encoder (imagenet, ssl, ...; downloaded once), or none
    decoder_channels: str = "256,128,64,32,16"  # Unet/UnetPlusPlus decoder widths, deepest first (5 values)

    # --- input size: training and inference run at height x width, both multiples of 32 ---
    height: int = 1280  # network input height (1280: Carvana's full height)
    width: int = 1920  # network input width (1920: Carvana's 1918 padded by 1 px each side; other sizes resize)

    # --- training ---
    crop_height: int = 0  # train on random crops of this height of the height x width image (multiple of 32; 0 = whole
    #                       image); validation and inference always see whole images. Crops give the boundary
    #                       detail of a larger input at the training cost of a smaller one (results/recipes.md)
    crop_width: int = 0  # the crops' width (multiple of 32; 0 = whole image)
    epochs: int = 40  # maximum epochs
    batch_size: int = 8  # images per optimiser step (before accumulation); 8 at 1280x1920: 18.5 GiB, +10% images/s over 4
    accum_steps: int = 1  # gradient accumulation steps
    optimizer: str = "adamw"  # adam | adamw
    lr: float = 3e-4  # peak learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.01  # final learning rate as a fraction of lr
    grad_clip: float = 1.0  # max gradient norm (0 = no clipping)
    ema: float = 0.0  # exponential moving average of the weights, updated every optimiser step with this decay (e.g.
    #                   0.995: an average over about the last 200 steps); it validates, is model.pt and predicts,
    #                   and log.csv keeps the weights' own val Dice beside it (val_dice_raw). 0 = off
    patience: int = 10  # early stopping: epochs without val Dice improvement (0 = off)
    bce_weight: float = 1.0  # loss = bce_weight * BCE + dice_weight * soft Dice
    dice_weight: float = 1.0  # weight of the soft Dice term of the loss
    augment: bool = True  # hflip + shift/scale/rotate + HSV, jointly on image and mask
    hflip_p: float = 0.5  # probability of a horizontal flip
    shift_scale_rotate_p: float = 0.5  # probability of a shift/scale/rotate (affine) change
    scale_low: float = 0.7  # affine: smallest zoom factor (below 1 the photo shrinks inside a border: a camera further
    #                         away; with --border constant it taught the models the dark-floor car: results/recipes.md)
    scale_high: float = 1.1  # affine: largest zoom factor
    translate: float = 0.08  # affine: largest shift, as a fraction of the width and of the height
    border: str = "constant"  # affine: what fills the uncovered border: constant (black; background in the mask) |
    #                           reflect (the mirrored photo)
    color_p: float = 0.5  # probability of a hue/saturation/value or brightness/contrast change
    val_every: int = 1  # validate every N epochs (and always at the last)
    tensorboard: bool = False  # also log to output/<experiment>/tensorboard/ (losses, lr, val Dice, overlays; pip install tensorboard)

    # --- hardware ---
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # mixed precision: auto (GPU: bf16 where supported, else fp16 + scaler; CPU: bf16 where it has AMX, else off) | bf16 | fp16 | off
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm), not per rank
    channels_last: bool = True  # NHWC memory format (faster convolutions on GPU and on CPU)
    compile: str = "auto"  # torch.compile the training model: auto (on GPU: +35% images/s, ~1.5 min to compile) | on | off
    jobs: int = 1  # 02 --fold all: folds trained side by side, one process each with its share of the cores (on a
    #                2-core CPU, 2 single-threaded folds at once beat one 2-thread process: results/recipes.md)
    threads: int = 0  # torch CPU threads per process (0 = torch's default, one per core; give cores / processes when several share them)

    # --- 03_predict / 04_submit ---
    tta: str = "auto"  # auto (pick on out-of-fold Dice) | none | hflip
    threshold: float = 0.0  # 0 = use the tuned threshold; else a fixed one in (0, 1)
    postprocess: str = "auto"  # binary masks: auto (keep only each mask's largest region where that scores better
    #                            out-of-fold: lib/postprocess.py) | largest | none
    predict_batch_size: int = 8  # images per inference batch
    submission: str = "submission"  # file name (without .csv.gz) under the experiment folder
    rle_order: str = "row"  # pixel order of run-length codes in submissions and train_masks.csv: row (Carvana: left to
    #                         right, then down) | column (top to bottom, then right)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def input_dir(self) -> Path:
        return Path(self.input)

    @property
    def output_dir(self) -> Path:
        return Path(self.output)


PRESETS: dict[str, dict] = {
    # Full resolution on one GPU (the Kaggle winners' recipe, one model per fold).
    "full": {},
    # The built-in demo: small, quick, CPU, synthetic data.
    "demo": dict(
        experiment="demo", encoder="resnet18", encoder_weights="none", decoder_channels="128,64,32,16,16",
        height=96, width=160, n_folds=2, epochs=10, val_every=3, batch_size=8, lr=3e-3,
        warmup_epochs=0.5, patience=0, workers=2, predict_batch_size=16, shift_scale_rotate_p=0.3, jobs=2,
    ),
    # Real data on a 2-core CPU (../shared/carvana_sample, 32 cars): 4-fold cross-validation (--fold all, 2 folds at
    # a time) in about 50 minutes; one model on every car (02 --fold full --epochs 29: 92% of a fold model's steps)
    # in under 20; each mask keeps its largest region. Epochs and post-processing were chosen by cross-validation,
    # the epochs on a GPU over several seeds (benchmarks/results/recipes.md).
    "cpu": dict(
        experiment="cpu_resnet18_160", encoder="resnet18", encoder_weights="none", decoder_channels="128,64,32,16,16",
        height=160, width=224, n_folds=4, epochs=42, val_every=21, batch_size=8, lr=2e-3, warmup_epochs=0.5,
        patience=0, workers=2, predict_batch_size=16, jobs=2, postprocess="largest",
    ),
}

PRESET_DOCS = {"full": "the defaults, full resolution on a GPU", "demo": "the synthetic demo on a CPU",
               "cpu": "the real 32-car sample on a 2-core CPU"}

_CHOICES = {
    "demo_kind": ("cars", "multiclass"),
    "optimizer": ("adam", "adamw"),
    "tta": ("auto", "none", "hflip"),
    "postprocess": ("auto", "none", "largest"),
    "cache": ("auto", "on", "off"),
    "compile": ("auto", "on", "off"),
    "amp": ("auto", "bf16", "fp16", "off"),
    "border": ("reflect", "constant"),
    "rle_order": ("row", "column"),
}


def _flag_type(f: dataclasses.Field):
    hint = typing.get_type_hints(Params)[f.name]
    if hint is bool:
        return bool
    if hint in (int, float, str):
        return hint
    raise TypeError(f"params field {f.name}: unsupported type {hint}")


# The stages that use each section of Params (its "# --- name ---" line), and the fields used elsewhere than their
# section says. Every script accepts every setting, so that one set of flags serves all four stages; its --help
# shows the ones it uses and says that the others are accepted.
SECTION_STAGES = {"where things are": "01 02 03 04", "the task": "01 02 03 04", "01_prepare": "01", "model": "02", "input size": "01 02",
                  "training": "02", "hardware": "02 03", "03_predict / 04_submit": "03 04"}
FIELD_STAGES = {"seed": "01 02", "jobs": "02", "workers": "01 02 03 04", "cache": "01 02 03", "cache_budget_gb": "01 02 03",
                "predict_batch_size": "02 03", "threshold": "03 04", "tta": "03", "submission": "04",
                "rle_order": "01 03 04", "lock_timeout": "01 02 03 04"}


def field_docs() -> dict[str, tuple[str, str]]:
    """{field: (section, description)}, read from the comments of the Params class in this file."""
    import inspect
    import re
    docs, section, last = {}, "", None
    for line in inspect.getsource(Params).splitlines():
        if m := re.match(r"\s+# --- (.+?)(:.*)? ---$", line):
            section, last = m.group(1), None
        elif m := re.match(r"\s+(\w+): [\w\[\]|, ]+ = .*?(?:  # (.*))?$", line):
            last = m.group(1)
            docs[last] = (section, m.group(2) or "")
        elif (m := re.match(r"\s+#\s+(.*)$", line)) and last:
            docs[last] = (docs[last][0], docs[last][1] + " " + m.group(1))
    return docs


def stages_of(name: str, docs: dict[str, tuple[str, str]]) -> set[str]:
    return set((FIELD_STAGES.get(name) or SECTION_STAGES.get(docs[name][0], "01 02 03 04")).split())


def _help_text(f: dataclasses.Field, doc: str) -> str:
    shown = "on" if f.default is True else "off" if f.default is False else "empty" if f.default == "" else f.default
    extras = [f"default {shown}"]
    presets = [f"{name} {v}" for name, values in PRESETS.items() if (v := values.get(f.name)) is not None]
    if presets:
        extras.append("--preset " + ", ".join(presets))
    if f.name in _CHOICES:
        extras.append("choices " + " | ".join(_CHOICES[f.name]))
    return f"{doc} ({'; '.join(extras)})".replace("%", "%%")


def add_param_flags(parser: argparse.ArgumentParser, stage: str | None = None, script: str | None = None) -> None:
    """One --flag per Params field (bools as --x/--no-x), plus --preset. With ``stage`` ("01".."04"), --help lists
    the settings that stage uses, with description, default, preset values and choices; the others are accepted
    and hidden."""
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="a named set of settings; flags given beside it win (" + "; ".join(
                            f"{k}: {v}" for k, v in PRESET_DOCS.items()) + ")")
    docs = field_docs()
    group = parser.add_argument_group(f"settings {script} uses (params.py)" if script else "settings (params.py)")
    for f in fields(Params):
        kind = _flag_type(f)
        flag = "--" + f.name.replace("_", "-")
        shown = stage is None or stage in stages_of(f.name, docs)
        text = _help_text(f, docs.get(f.name, ("", ""))[1]) if shown else argparse.SUPPRESS
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=None, choices=_CHOICES.get(f.name),
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


# numeric settings and their ranges: (low, high, low included, high included); None = no bound
_RANGES: dict[str, tuple] = {
    "seed": (0, 2**32 - 1, True, True), "demo_train_cars": (2, None, True, True), "demo_test_cars": (0, None, True, True),
    "classes": (1, 255, True, True), "demo_width": (32, None, True, True), "demo_height": (32, None, True, True), "n_folds": (2, None, True, True),
    "workers": (0, None, True, True), "cache_budget_gb": (0, None, True, True), "lock_timeout": (0, None, True, True),
    "epochs": (1, None, True, True), "batch_size": (1, None, True, True), "accum_steps": (1, None, True, True),
    "lr": (0, None, False, True), "weight_decay": (0, None, True, True), "warmup_epochs": (0, None, True, True),
    "min_lr_ratio": (0, 1, True, True), "grad_clip": (0, None, True, True), "patience": (0, None, True, True),
    "bce_weight": (0, None, True, True), "dice_weight": (0, None, True, True), "hflip_p": (0, 1, True, True),
    "shift_scale_rotate_p": (0, 1, True, True), "color_p": (0, 1, True, True),
    "scale_low": (0, None, False, True), "scale_high": (0, None, False, True), "translate": (0, 0.5, True, True),
    "val_every": (1, None, True, True), "ema": (0, 1, True, False),
    "threads": (0, None, True, True), "max_image_mp": (0, None, False, True), "jobs": (1, None, True, True), "predict_batch_size": (1, None, True, True),
}


def _out_of_range(name: str, value) -> str | None:
    low, high, low_in, high_in = _RANGES[name]
    if isinstance(value, float) and not math.isfinite(value):
        return f"--{name.replace('_', '-')} {value} must be a finite number"
    too_low = low is not None and (value < low if low_in else value <= low)
    too_high = high is not None and (value > high if high_in else value >= high)
    if too_low or too_high:
        left, right = ("[" if low_in else "(") + str(low), str(high if high is not None else "inf") + (
            "]" if high_in else ")")
        return f"--{name.replace('_', '-')} {value} must be in {left}, {right}"
    return None


def check(p: Params) -> None:
    """Reject settings that cannot work, with the reason."""
    problems = [msg for name in _RANGES if (msg := _out_of_range(name, getattr(p, name)))]
    for name in ("height", "width"):
        v = getattr(p, name)
        if v <= 0 or v % 32:
            problems.append(f"--{name} {v} must be a positive multiple of 32")
    for name, whole in (("crop_height", p.height), ("crop_width", p.width)):
        v = getattr(p, name)
        if v and (v < 0 or v % 32 or v > whole):
            problems.append(f"--{name.replace('_', '-')} {v} must be 0 (whole image) or a positive multiple of 32 up "
                            f"to --{name[5:]} {whole}")
    if (p.crop_height or p.crop_width) and not p.augment:
        problems.append("--crop-height/--crop-width crop inside the augmentation, which --no-augment turns off: "
                        "leave out --no-augment or the crop flags")
    problems += [f"--{name.replace('_', '-')} {getattr(p, name)!r} must be one of {', '.join(allowed)}"
                 for name, allowed in _CHOICES.items() if getattr(p, name) not in allowed]
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


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors as one line (the usage block is what --help is for); exit status 2 as argparse's."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse(description: str, argv: list[str] | None = None,
          extra: typing.Callable[[argparse.ArgumentParser], None] | None = None, script: str | None = None
          ) -> tuple[Params, argparse.Namespace]:
    """Parse a script's command line: its own arguments (``extra``) and every Params field. ``script`` (its file
    name, e.g. "02_train.py") puts its own arguments first in --help and shows only the settings it uses."""
    stage = script[:2] if script else None
    epilog = (f"Settings of the other stages are accepted too, and ignored here, so that one set of flags serves "
              f"every stage. All settings: python params.py") if stage else None
    parser = OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
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
    import os
    import shlex
    import sys
    root = Path(__file__).resolve().parent
    python = Path(sys.executable)
    shown_python = os.path.relpath(python) if python.is_relative_to(Path.cwd()) else "python"  # .venv/bin/python
    words = [shown_python, os.path.relpath(root / script), *args]
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
    return "`" + " ".join(shlex.quote(str(w)) for w in words) + "`"


def rerun(*extra: str) -> str:
    """The command that runs this process again as the user gave it (``command`` of its script and own arguments),
    with ``extra`` arguments (a setting among them replaces the user's): what an error advises once the process that
    held a lock has finished, or with the flag that lets it through (``--max-image-mp 180``, ``--overwrite``)."""
    import sys
    script, args = (RUN["script"], RUN["args"]) if RUN else (Path(sys.argv[0]).name, [])
    return command(script, *args, *[a for a in extra if a not in args or not a.startswith("--")])


def save(p: Params, path: Path) -> None:
    from lib.files import write_text_atomic
    write_text_atomic(path, json.dumps(p.to_dict(), indent=2) + "\n")


# settings whose type changed: the value an older params.json or checkpoint holds -> today's
_LEGACY = {"amp": {True: "auto", False: "off"}, "compile": {True: "on", False: "off"}}


def from_dict(d: dict) -> Params:
    """Params saved by an earlier run (e.g. inside a checkpoint); unknown keys are an error."""
    d = {k: _LEGACY[k].get(v, v) if k in _LEGACY and isinstance(v, bool) else v for k, v in d.items()}
    return make_params(**d)


if __name__ == "__main__":  # python params.py: every setting, with its description, default, presets and choices
    parse(__doc__, ["--help"])
