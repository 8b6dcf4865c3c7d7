"""Every training knob in one table, the presets per source, and the resolved ``TrainConfig``.

One place answers "what does a run train with": the app's sidebar (labels, ranges, help,
defaults), ``python -m hotdog train`` (flags, help texts, defaults), the benchmark and
scripts/experiments.py all read this module. A ``TrainConfig`` is always *resolved*: after
construction every knob holds the value the run uses (no ``None`` meaning "the default"),
so config.json records what was used and nobody recomputes it.

Presets (``PRESETS``):

* ``quick``: the stable values with frozen features computed once (feature cache): on
  hotdog-mini 0.94 0.94 0.92 0.90 0.90 in 23 s on a 2-core CPU, where ``stable`` took
  minutes for the same final 0.90 (README, "Which preset by default"). The app and the CLI
  start from ``default_preset(devices)``: quick on CPUs only, stable with a GPU.
* ``stable`` (``TrainConfig``'s default): what reached >= 0.90 test accuracy on hotdog-mini at the end of
  every epoch from the 3rd on (efficientnet_lite0, 224 px, 5 epochs: 0.92 0.84 0.94 0.92 0.90,
  README). BatchNorm keeps its pretrained statistics (batch statistics of 32 augmented photos
  drift), lr 0.001 for EfficientNet-Lite0 (the chapter's 0.01 wrecks its features within an
  epoch: 0.82 0.52 0.82 ...), batch 32, and the output layer starts from ImageNet's rows where
  class names match ("hotdog": 0.94 before any training), so no random head sends large
  gradients into the features. After training the weights are mixed with the zero-shot model
  (WiSE-FT, alpha 0.6): on hotdog-mini, seeds 0 and 1, test 0.94 / 0.92 and the out-of-source
  proxy 0.88 / 0.88, vs 0.88 / 0.90 and 0.82 / 0.84 for the plain fine-tune (README, "Robust
  fine-tuning").
* ``chapter``: the chapter's ``train_fine_tuning`` exactly: lr 0.01 (scratch 0.1), output
  layer x10, batch 128, BatchNorm statistics updating, a random output layer.

Explicit values always win over the preset (``TrainConfig(root, lr=0.003)``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from hotdog.errors import ConfigError

DEFAULT_SOURCE = "efficientnet_lite0"
SOURCES = ("efficientnet_lite0", "resnet18_v2")
MODES = ("finetune", "scratch")
BN_MODES = ("keep", "update")
# dist_async is left out: its updates cannot equal a single-process run (see hotdog.distributed).
KVSTORES = ("device", "local", "dist_sync")
PRESETS = ("quick", "stable", "chapter")
# TrainConfig's own default: a recipe that does not depend on the machine. What the app and
# the CLI start from is default_preset(devices): "quick" on a CPU, "stable" with a GPU.
DEFAULT_PRESET = "stable"
PRESET_TITLES = {"quick": "Quick", "stable": "Stable", "chapter": "Chapter's"}
PRESET_HELP = {
    "quick": "Frozen features computed once (feature cache), output layer from ImageNet's rows, the stable "
             "preset's lr: seconds on a CPU, as accurate as full fine-tuning on small data sets.",
    "stable": "BatchNorm keeps its pretrained statistics, lr 0.001 for EfficientNet-Lite0, batch 32, "
              "output layer from ImageNet's rows, WiSE-FT alpha 0.6: steady on small data sets, robust off them.",
    "chapter": "The chapter's train_fine_tuning exactly: lr 0.01, x10 head, batch 128, BatchNorm "
               "statistics updating, random output layer.",
}

# (preset, mode) -> values; (preset, mode, source) -> what differs for that source.
_PRESET_VALUES: dict[tuple, dict[str, Any]] = {
    ("stable", "finetune"): {"lr": 0.001, "lr_mult": 10.0, "wd": 1e-3, "batch_size": 32, "epochs": 5,
                             "bn_mode": "keep", "init_output_from_imagenet": True, "freeze": False,
                             "wise_alpha": 0.6},
    ("stable", "scratch"): {"lr": 0.1, "lr_mult": 1.0, "wd": 1e-3, "batch_size": 32, "epochs": 5,
                            "bn_mode": "update", "init_output_from_imagenet": False, "freeze": False, "wise_alpha": 1.0},
    ("chapter", "finetune"): {"lr": 0.01, "lr_mult": 10.0, "wd": 1e-3, "batch_size": 128, "epochs": 5,
                              "bn_mode": "update", "init_output_from_imagenet": False, "freeze": False, "wise_alpha": 1.0},
    ("chapter", "scratch"): {"lr": 0.1, "lr_mult": 1.0, "wd": 1e-3, "batch_size": 128, "epochs": 5,
                             "bn_mode": "update", "init_output_from_imagenet": False, "freeze": False, "wise_alpha": 1.0},
}
# Quick is stable with the features frozen (and so computed once: feature_cache defaults on).
_PRESET_VALUES[("quick", "finetune")] = {**_PRESET_VALUES[("stable", "finetune")], "freeze": True}
_PRESET_VALUES[("quick", "scratch")] = dict(_PRESET_VALUES[("stable", "scratch")])
_SOURCE_VALUES: dict[tuple, dict[str, Any]] = {
    # ResNet-18 is the chapter's own model: its 0.01 is stable there.
    ("stable", "finetune", "resnet18_v2"): {"lr": 0.01},
    ("quick", "finetune", "resnet18_v2"): {"lr": 0.01},
}
# The validation split's rule (knob val_fraction): off by default, suggested from this size on.
RECOMMENDED_VAL_FRACTION = 0.1
VAL_MIN_PER_CLASS = 100
PRESET_KNOBS = ("lr", "lr_mult", "wd", "batch_size", "epochs", "bn_mode", "init_output_from_imagenet", "freeze",
                "wise_alpha")


@dataclass(frozen=True)
class Knob:
    """One setting: its type and allowed range (validation), its words (CLI and sidebar)."""

    name: str
    kind: type
    label: str
    help: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself not allowed (a learning rate of 0)
    choices: tuple = ()
    default: Any = None  # knobs outside the presets
    flag: str | None = None  # CLI flag; None = "--" + name with dashes

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("lr", float, "Learning rate", "SGD learning rate of the copied layers", 0.0, 1e6, lo_open=True),
    Knob("lr_mult", float, "Output layer lr multiplier",
         "the new output layer learns this many times faster than the copied features", 0.0, 1000.0, lo_open=True),
    Knob("wd", float, "Weight decay", "L2 weight decay", 0.0, 1.0),
    Knob("batch_size", int, "Batch size", "images per SGD step", 1, 4096),
    Knob("epochs", int, "Epochs", "passes over the training split", 1, 1000),
    Knob("bn_mode", str, "BatchNorm",
         "keep: pretrained running statistics, frozen (stable on small data); update: the chapter's behaviour",
         choices=BN_MODES),
    Knob("init_output_from_imagenet", bool, "Start the output layer from ImageNet's rows",
         "a class named like an ImageNet class ('hotdog') starts from that row; 'not-hotdog' from its negative",
         flag="--init-from-imagenet"),
    Knob("freeze", bool, "Freeze the copied features",
         "train only the output layer (much faster: features are computed once)", default=False),
    Knob("seed", int, "Seed", "seed of weight init, augmentation and batch order", 0, 2**31 - 1, default=0),
    Knob("input_size", int, "Image size", "crop size in pixels (default: the source model's, 224)", 32, 1024),
    Knob("warmup_epochs", int, "LP-FT: head-only epochs first",
         "LP-FT (linear probe, then fine-tune; Kumar et al. 2022): the first N epochs train just the new output "
         "layer on cached features, then everything trains, so early head gradients never distort the pretrained "
         "features", 0, 1000, default=0),
    Knob("feature_cache", bool, "Compute frozen features once",
         "with frozen features, run the network body once per image and train the head on the results",
         default=True),
    Knob("augment_views", int, "Augmented views per photo (frozen, cached)",
         "with frozen features, also cache K randomly augmented views of each training image", 0, 32, default=0),
    Knob("micro_batch", int, "Micro-batch (gradient accumulation)",
         "images per forward/backward pass: a batch is run as batch/micro-batch passes whose gradients add up "
         "before one SGD step, so a large batch trains in the memory of a small one (default: the whole batch "
         "when the memory estimate says it fits, else the largest that fits)", 1, 4096),
    Knob("num_workers", int, "Data loader workers", "decoding/augmentation worker processes "
         "(default: 0 on a CPU, which keeps runs reproducible; up to 4 with GPUs)", 0, 64),
    # #17 GPU and multi-machine paths (hotdog.precision, hotdog.distributed).
    Knob("amp", bool, "Mixed precision (float16, GPU only)",
         "train in float16 where safe with dynamic loss scaling (MXNet's contrib.amp); needs GPU devices: "
         "a run on the CPU is refused", default=False),
    Knob("kvstore", str, "Gradient exchange (kvstore)",
         "device: sum gradients on the devices of this machine; local: on the CPU; dist_sync: MXNet's "
         "parameter server across processes/machines (start with `python -m hotdog launch`)",
         choices=KVSTORES, default="device"),
    Knob("val_fraction", float, "Validation fraction (best epoch)",
         "share of each class's training photos held out (seeded, stratified) to pick the best epoch, whose "
         "weights are saved beside the last epoch's; never chosen on the test split. 0 = off (default: on a "
         f"small set a few validation photos are noise; recommended {RECOMMENDED_VAL_FRACTION:g} from "
         f"{VAL_MIN_PER_CLASS} training photos per class)", 0.0, 0.5, default=0.0),
    # Robust fine-tuning (hotdog.robust).
    Knob("wise_alpha", float, "WiSE-FT alpha",
         "WiSE-FT (Wortsman et al. 2022): after training the saved weights are (1 - alpha) x the zero-shot model "
         "(source features + ImageNet-row head) + alpha x the fine-tuned one; 1 = plain fine-tuning, lower keeps "
         "more of what ImageNet knew (needs classes named like ImageNet classes)", 0.0, 1.0),
    Knob("l2sp", float, "L2-SP strength",
         "L2-SP (Li et al. 2018): the copied layers decay toward their pretrained weights with this strength "
         "instead of toward 0 (the output layer keeps the weight decay); 0 = off", 0.0, 1000.0, default=0.0),
    Knob("proxy_eval", bool, "Out-of-source check",
         "after training, also score the test split shrunk to 64 px and JPEG-compressed (quality 15) and draw "
         "accuracy vs WiSE-FT alpha (about a minute on a CPU)", default=True),
)}


def recommended_val_fraction(train_per_class: list[int]) -> float:
    """The validation fraction to suggest for a training split with these photos per class:
    RECOMMENDED_VAL_FRACTION once every class has VAL_MIN_PER_CLASS photos (>= 10 validation
    photos each), else 0 (fewer make the "best" epoch a coin toss)."""
    return RECOMMENDED_VAL_FRACTION if train_per_class and min(train_per_class) >= VAL_MIN_PER_CLASS else 0.0


def preset_values(preset: str = DEFAULT_PRESET, mode: str = "finetune", source: str = DEFAULT_SOURCE) -> dict:
    """The preset's value of every preset knob for this mode and source."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    values = dict(_PRESET_VALUES[(preset, mode)])
    values.update(_SOURCE_VALUES.get((preset, mode, source), {}))
    return values


def default_preset(devices=None) -> str:
    """The preset the app and the CLI start from on these devices (names like 'gpu(0)', a
    comma-separated string, or None for every GPU else the CPU): "quick" when the run would
    train on CPUs only, "stable" with a GPU. On a CPU full fine-tuning costs minutes for no
    better accuracy on small data sets (README, "Which preset by default")."""
    if isinstance(devices, str):
        devices = [d for d in devices.replace(";", ",").split(",") if d.strip()]
    if not devices:
        from hotdog.devices import available_devices

        devices = available_devices()
    return "stable" if any(str(d).strip().lower().startswith("gpu") for d in devices) else "quick"


def describe_default(name: str) -> str:
    """The defaults of a preset knob in words, for help texts: 'stable 0.001 (resnet18_v2: 0.01),
    scratch 0.1; chapter 0.01, scratch 0.1'."""
    parts = []
    for preset in PRESETS:
        base = preset_values(preset, "finetune")[name]
        others = [f"{s}: {_fmt(preset_values(preset, 'finetune', s)[name])}" for s in SOURCES
                  if preset_values(preset, "finetune", s)[name] != base]
        scratch = preset_values(preset, "scratch")[name]
        text = f"{preset} {_fmt(base)}" + (f" ({', '.join(others)})" if others else "")
        if scratch != base and name not in ("init_output_from_imagenet", "lr_mult", "bn_mode", "freeze", "wise_alpha"):
            text += f", scratch {_fmt(scratch)}"
        parts.append(text)
    return "; ".join(parts)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def check_value(name: str, value: Any) -> Any:
    """``value`` converted to the knob's type, or ConfigError with one sentence saying why not."""
    knob = KNOBS[name]
    label = knob.label.lower()
    if knob.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{label} must be true or false, not {value!r}")
    if knob.kind is str:
        if value not in knob.choices:
            raise ConfigError(f"{label} must be one of {', '.join(knob.choices)}, not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{label} must be a number, not {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{label} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{label} must be a finite number, not {value!r}")
    if knob.kind is int:
        if number != int(number):
            raise ConfigError(f"{label} must be a whole number, not {value!r}")
        number = int(number)
    lo, hi = knob.lo, knob.hi
    if lo is not None and (number < lo or (knob.lo_open and number == lo)):
        raise ConfigError(f"{label} must be {'above' if knob.lo_open else 'at least'} {_fmt(lo)}, not {value!r}")
    if hi is not None and number > hi:
        raise ConfigError(f"{label} must be at most {_fmt(hi)}, not {value!r}")
    return number


@dataclass
class TrainConfig:
    """Every knob of a training run, resolved: a knob left ``None`` takes the value of
    ``preset`` for this mode and source (see PRESETS); an invalid value raises ConfigError.

    For ``mode="scratch"`` the fine-tuning-only knobs are normalised to what a scratch run
    does (nothing frozen, random head, BatchNorm updating, no warm-up)."""

    data_root: str
    source: str = DEFAULT_SOURCE
    mode: str = "finetune"
    preset: str = DEFAULT_PRESET
    lr: float | None = None
    lr_mult: float | None = None
    wd: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    bn_mode: str | None = None
    init_output_from_imagenet: bool | None = None
    freeze: bool | None = None
    seed: int = 0
    input_size: int | None = None  # None: the source model's own size
    warmup_epochs: int = 0
    feature_cache: bool = True
    augment_views: int = 0
    # None: the whole batch when the memory estimate says it fits, else chosen by prepare()
    # (hotdog.memory.plan); a number below batch_size accumulates gradients (train._Fit.step).
    micro_batch: int | None = None
    num_workers: int | None = None  # None: chosen per device (see train._default_workers)
    devices: list[str] | None = None  # None: every GPU, else the CPU
    # False trains on the test transform (no random crops/flips): used to check that the
    # feature-cache path agrees with the plain frozen loop.
    augment: bool = True
    amp: bool = False  # float16 mixed precision, GPU only (hotdog.precision)
    kvstore: str = "device"  # gluon.Trainer's kvstore; dist_sync: hotdog.distributed
    # Share of the training split held out to pick the best epoch (0: off); see KNOBS.
    val_fraction: float = 0.0
    wise_alpha: float | None = None
    l2sp: float = 0.0
    proxy_eval: bool = True
    # Extra photo folders (one sub-folder per class) scored after training, beside the test
    # split: hotdog.robust records per-source metrics in the run. Not a recipe knob.
    also_eval: list[str] | None = None

    def __post_init__(self):
        if not isinstance(self.data_root, (str, bytes)) and not hasattr(self.data_root, "__fspath__"):
            raise ConfigError(f"data_root must be a folder path, not {self.data_root!r}")
        self.data_root = str(self.data_root)
        if self.source not in SOURCES:
            raise ConfigError(f"unknown source model {self.source!r}; valid sources: {', '.join(SOURCES)}")
        defaults = preset_values(self.preset, self.mode, self.source)
        for name, default in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        for name, knob in KNOBS.items():
            value = getattr(self, name)
            if value is None:
                if knob.default is None and name in ("input_size", "num_workers", "micro_batch"):
                    continue
                value = knob.default
            setattr(self, name, check_value(name, value))
        if self.micro_batch is not None and self.micro_batch > self.batch_size:
            raise ConfigError(f"micro-batch ({self.micro_batch}) cannot exceed the batch size ({self.batch_size})")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"head warm-up epochs ({self.warmup_epochs}) cannot exceed epochs ({self.epochs})")
        if not isinstance(self.augment, bool):
            raise ConfigError(f"augment must be true or false, not {self.augment!r}")
        if self.mode == "scratch":
            # Every layer is new: nothing to freeze, warm up, keep statistics of or multiply.
            self.freeze, self.init_output_from_imagenet, self.warmup_epochs = False, False, 0
            self.bn_mode, self.lr_mult = "update", 1.0
            self.wise_alpha, self.l2sp = 1.0, 0.0
        if isinstance(self.also_eval, (str, os.PathLike)):
            self.also_eval = [self.also_eval]
        if self.also_eval is not None:
            if not isinstance(self.also_eval, (list, tuple)) or not all(
                    isinstance(d, (str, os.PathLike)) for d in self.also_eval):
                raise ConfigError(f"extra test folders must be a list of folder paths, not {self.also_eval!r}")
            self.also_eval = [str(d) for d in self.also_eval] or None
        if isinstance(self.devices, str):
            self.devices = [d.strip() for d in self.devices.replace(";", ",").split(",") if d.strip()]
        if self.devices is not None:
            if not isinstance(self.devices, (list, tuple)) or not all(isinstance(d, str) for d in self.devices):
                raise ConfigError(f"devices must be a list like ['cpu(0)', 'gpu(0)'], not {self.devices!r}")
            self.devices = list(self.devices) or None

    @property
    def uses_feature_cache(self) -> bool:
        return bool(self.freeze and self.feature_cache and self.mode == "finetune")

    @property
    def head_lr(self) -> float:
        """The output layer's learning rate."""
        return self.lr * self.lr_mult

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From config.json; unknown keys (newer or older versions) are ignored."""
        if not isinstance(d, dict):
            raise ConfigError(f"a training config must be a JSON object, not {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        if "data_root" not in d:
            raise ConfigError("the training config names no data set (data_root)")
        return cls(**{k: v for k, v in d.items() if k in names})


def config_for(data_root, source: str = DEFAULT_SOURCE, mode: str = "finetune",
               preset: str = DEFAULT_PRESET, **overrides) -> TrainConfig:
    """The preset's config; ``overrides`` (explicit values, ``None`` ignored) win."""
    return TrainConfig(str(data_root), source=source, mode=mode, preset=preset,
                       **{k: v for k, v in overrides.items() if v is not None})
