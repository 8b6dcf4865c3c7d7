"""Typed errors with messages meant for people (the CLI and the app show ``str(err)``)."""


class HotdogError(Exception):
    """Base class: anything the user can fix or should be told about in one sentence."""


class ConfigError(HotdogError):
    """A training setting is out of range or of the wrong type."""


class DownloadError(HotdogError):
    """A download failed (offline, HTTP error, truncated body, checksum mismatch)."""


class UnsafeArchiveError(HotdogError):
    """A zip archive was refused (zip-slip, symlink, zip bomb, ...)."""


class DatasetError(HotdogError):
    """A data set folder is unusable (missing, fewer than 2 classes, empty class, ...)."""


class AccessError(DatasetError):
    """A folder was refused because it is outside the folders this server shares data from.
    Its message never names a server path nor says whether the folder exists."""


class ImageDecodeError(HotdogError):
    """Bytes or a file could not be decoded into an RGB image."""


class RequestBudgetError(HotdogError):
    """One request asks for too much work (too many photos, too many pixels in all)."""


class ModelError(HotdogError):
    """A source model is unknown or its weights cannot be had."""


class UnsafeCheckpointError(ModelError):
    """A checkpoint file was refused because it is not a plain tensor dictionary."""


class StorageError(HotdogError):
    """A file or folder cannot be written or locked (read-only, full disk, busy)."""


class RunStoreError(StorageError):
    """The run store cannot be read or written (read-only, full, missing run)."""


class TrainingBusyError(HotdogError):
    """Another training job already runs in this process."""


class MemoryRefusedError(ConfigError):
    """A training would need more memory than this machine (or its cgroup) has left."""
