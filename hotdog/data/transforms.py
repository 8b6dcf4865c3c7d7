"""The chapter's input pipeline: what a model expects (``Preprocess``), the train/test
transforms built from it, and the cached Gluon dataset that feeds them.

Images arrive through ``decode_image`` only, so training, evaluation and prediction see
a photo identically.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image

from hotdog.data.decoded import DecodedCache
from hotdog.data.images import DEFAULT_MAX_PIXELS, decode_image, to_rgb
from hotdog.errors import ImageDecodeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """What a source model expects: crop size, resize-before-crop and normalisation."""

    input_size: int = 224
    resize: int = 256
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __post_init__(self):
        # Lists from JSON/configs would make the frozen dataclass unhashable.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if int(self.input_size) < 1 or int(self.resize) < 1:
            raise ValueError(f"input_size and resize must be positive, got {self.input_size}, {self.resize}")

    def scaled(self, input_size: int) -> "Preprocess":
        """Same recipe at another crop size (keeps the chapter's 256/224 ratio)."""
        return Preprocess(int(input_size), int(round(input_size * 256 / 224)), tuple(self.mean), tuple(self.std))

    def to_dict(self) -> dict:
        return {"input_size": self.input_size, "resize": self.resize, "mean": list(self.mean), "std": list(self.std)}


def _as_hwc_uint8(img: Any):
    import mxnet as mx

    if isinstance(img, Image.Image):
        arr = np.asarray(img if img.mode == "RGB" else to_rgb(img), dtype=np.uint8)
    elif isinstance(img, np.ndarray):
        arr = img
    elif isinstance(img, mx.nd.NDArray):
        nd = img if img.dtype == np.uint8 else img.astype("uint8")
        if nd.ndim == 2:
            nd = nd.expand_dims(axis=2).tile(reps=(1, 1, 3))
        return nd
    else:
        raise TypeError(f"expected a PIL image or an HWC uint8 array, got {type(img).__name__}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.uint8)
    return mx.nd.array(np.ascontiguousarray(arr), dtype="uint8")


class _ImageTransform:
    """Picklable wrapper: PIL/NDArray in, normalised CHW float32 NDArray out.

    Gluon's transform blocks are built lazily per process so a DataLoader worker forked
    from the parent never shares MXNet objects with it.
    """

    def __init__(self, pre: Preprocess, train: bool):
        self.pre = pre
        self.train = train
        self._block = None
        self._pid = os.getpid()
        # Drawn in the building process (after the caller's seeding), so worker seeds
        # below are reproducible for a seeded run.
        self._base_seed = random.getrandbits(31) if train else 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_block"] = None
        return state

    def _reseed_if_forked(self) -> None:
        """Give each DataLoader worker its own augmentation stream.

        RandomFlipLeftRight draws from MXNet's RNG, which forked DataLoader workers inherit
        in identical states: without this, worker 1 repeats worker 0's flips batch for
        batch (Python's ``random``, used by RandomResizedCrop, is reseeded from the OS on
        fork, which makes crops unreproducible instead). Each worker gets a seed from the
        building process's draw and its worker index. Only worker processes are touched.
        """
        pid = os.getpid()
        if pid == self._pid:
            return
        self._pid = pid
        import multiprocessing

        import mxnet as mx

        ident = multiprocessing.current_process()._identity or (pid,)  # noqa: SLF001
        seed = (self._base_seed + 7919 * int(ident[-1])) % (2**31 - 1)
        random.seed(seed)
        np.random.seed(seed)
        mx.random.seed(seed)

    def _build(self):
        from mxnet.gluon.data.vision import transforms

        size, resize = self.pre.input_size, self.pre.resize
        normalize = transforms.Normalize(list(self.pre.mean), list(self.pre.std))
        if self.train:
            steps = [transforms.RandomResizedCrop(size), transforms.RandomFlipLeftRight()]
        else:
            steps = [transforms.Resize(resize), transforms.CenterCrop(size)]
        return transforms.Compose(steps + [transforms.ToTensor(), normalize])

    def __call__(self, img):
        if self.train:
            self._reseed_if_forked()
        nd = _as_hwc_uint8(img)
        h, w = nd.shape[0], nd.shape[1]
        # Gluon's crops misbehave on images smaller than the crop (1x1, thin strips).
        # Stretch only the short dimension(s): keeping the aspect ratio would turn an
        # 8000x20 strip into an 89600x224 monster.
        need = self.pre.input_size
        if h < need or w < need:
            import mxnet as mx

            nd = mx.image.imresize(nd, max(w, need), max(h, need), interp=1)
        if self._block is None:
            self._block = self._build()
        return self._block(nd)

    def __repr__(self) -> str:
        return f"{'train' if self.train else 'test'}_transform({self.pre})"


def train_transform(pre: Preprocess = Preprocess()) -> Callable:
    """RandomResizedCrop(size) + RandomFlipLeftRight + ToTensor + Normalize (chapter)."""
    return _ImageTransform(pre, train=True)


def test_transform(pre: Preprocess = Preprocess()) -> Callable:
    """Resize(resize) + CenterCrop(size) + ToTensor + Normalize (chapter)."""
    return _ImageTransform(pre, train=False)


test_transform.__test__ = False  # keep pytest from collecting it when imported into a test module


def _gluon_dataset_base():
    from mxnet.gluon.data import Dataset

    return Dataset


class ImageListDataset(_gluon_dataset_base()):
    """(path, label) pairs -> (CHW float32 NDArray, int label) through ``decode_image``.

    With ``cache_decoded`` a decoded file is kept as a compact HWC uint8 array, shrunk so
    its shorter side is at most ``min_side`` (pass the transform's ``Preprocess.resize``),
    in a byte-capped store (:class:`hotdog.data.decoded.DecodedCache`, default cap
    ``HOTDOG_DECODED_CACHE_MB``): a set that fits is kept in memory, a larger one is
    spilled to disk once decoded (:mod:`hotdog.data.spill`), so memory stays flat however
    many photos there are.
    Datasets over the same files may share one store (``cache=``). Call ``preload()``
    before building a multi-worker DataLoader so forked workers inherit the cache.
    """

    def __init__(self, items: Iterable[tuple[Path, int]], transform: Callable | None = None,
                 cache_decoded: bool = True, min_side: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, cache: DecodedCache | None = None):
        self.items = [(Path(p), int(label)) for p, label in items]
        self.transform = transform
        self.cache_decoded = cache_decoded
        self.min_side = int(min_side) if min_side else None
        self.max_pixels = max_pixels
        # Keyed by path: datasets sharing the store (same files, other transforms) agree,
        # and dropping unreadable items in preload() needs no re-keying.
        self._cache = cache if cache is not None else DecodedCache()
        if cache_decoded:
            self._cache.expect(self._key(p) for p, _ in self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def decoded_cache(self) -> DecodedCache:
        """The decoded-photo store (share it with ``cache=``; its ``stats()`` for reports)."""
        return self._cache

    def _key(self, path: Path) -> tuple:
        # (path, min_side, max_pixels): what the decode depends on, and the spill store's key
        return (str(path), self.min_side, self.max_pixels)

    def _decoded(self, idx: int) -> np.ndarray:
        path = self.items[idx][0]
        key = self._key(path)
        arr = self._cache.get(key) if self.cache_decoded else None
        if arr is None:
            img = decode_image(path, self.max_pixels, min_side=self.min_side)
            arr = np.asarray(img, dtype=np.uint8)
            if self.cache_decoded:
                self._cache.put(key, arr)
        return arr

    def image(self, idx: int) -> Image.Image:
        """The decoded (possibly shrunk) RGB image, e.g. for showing samples."""
        return Image.fromarray(self._decoded(idx))

    def preload(self, threads: int = 2, progress=None) -> list[dict[str, str]]:
        """Decode everything now; drop items that fail and return them as {path, reason}.
        ``progress(n)`` is called on this thread with the count decoded so far, about every
        1 % of the items and at the end."""
        from concurrent.futures import ThreadPoolExecutor

        failures: dict[int, str] = {}

        def work(i: int) -> None:
            try:
                self._decoded(i)
            except ImageDecodeError as err:
                failures[i] = str(err)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            step = max(1, len(self.items) // 100)
            for n, _ in enumerate(pool.map(work, range(len(self.items))), 1):
                if progress is not None and (n % step == 0 or n == len(self.items)):
                    progress(n)
        if failures:
            keep = [i for i in range(len(self.items)) if i not in failures]
            bad = [{"path": str(self.items[i][0]), "reason": failures[i]} for i in sorted(failures)]
            self.items = [self.items[i] for i in keep]
            return bad
        return []

    def __getitem__(self, idx: int):
        arr = self._decoded(idx)
        label = self.items[idx][1]
        if self.transform is None:
            import mxnet as mx

            return mx.nd.array(arr, dtype="uint8"), label
        return self.transform(arr), label
