"""Getting image-folder data sets onto disk safely and reading them the same way everywhere.

One rule runs through the package, *untrusted bytes never reach the rest of the app
unchecked*; each submodule owns one part of it:

* ``images``: what counts as an image (content, not extension) and the one decoder.
* ``discovery``: finding the data set folder, its layout, classes and splits.
* ``transforms``: the chapter's preprocessing and the cached Gluon dataset.
* ``access``: which server folders a user may choose (``HOTDOG_DATA_ROOTS``).
* ``names``: how names from users' disks are shown, and the one data set name rule.
* ``archive``: safe zip extraction and atomic, locked installs.
* ``download``: the checksummed download of the chapter's hotdog.zip.

Callers use the names re-exported here (``from hotdog import data; data.load_splits``).
Nothing in this package imports the engine (train, models, jobs, runs).
"""

from hotdog.data.access import allowed_roots, resolve_user_folder
from hotdog.data.archive import ZipLimits, install_zip, remove_stale_leftovers, safe_extract
from hotdog.data.discovery import (
    DatasetReport,
    DatasetSplits,
    carve_validation,
    find_dataset_root,
    fingerprint,
    installed_datasets,
    load_splits,
    validate_dataset,
)
from hotdog.data.download import HOTDOG_SHA1, HOTDOG_URL, download_hotdog
from hotdog.data.images import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    MAX_IMAGE_FILE_BYTES,
    MAX_PHOTOS_PER_REQUEST,
    MAX_REQUEST_PIXELS,
    check_request_budget,
    decode_image,
    image_problem,
    is_image_file,
    list_images,
)
from hotdog.data.names import check_dataset_name, dataset_name_from_file, display_name
from hotdog.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageListDataset,
    Preprocess,
    test_transform,
    train_transform,
)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "HOTDOG_URL", "HOTDOG_SHA1", "DEFAULT_MAX_PIXELS",
    "MAX_IMAGE_FILE_BYTES", "ALLOWED_FORMATS", "IMAGE_EXTENSIONS",
    "MAX_PHOTOS_PER_REQUEST", "MAX_REQUEST_PIXELS", "check_request_budget",
    "decode_image", "image_problem", "is_image_file", "list_images",
    "Preprocess", "train_transform", "test_transform", "ImageListDataset",
    "DatasetSplits", "DatasetReport", "find_dataset_root", "load_splits", "validate_dataset",
    "installed_datasets", "download_hotdog", "ZipLimits", "safe_extract", "install_zip",
    "dataset_name_from_file", "check_dataset_name", "display_name", "fingerprint",
    "allowed_roots", "resolve_user_folder", "remove_stale_leftovers",
    "carve_validation",
]
