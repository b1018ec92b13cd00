"""Why a model directory cannot be loaded. Apart from persistence.py (which imports torch), so that the command
line can name these errors in its one-line error path without importing torch."""


class ModelLoadError(Exception):
    """A model directory is missing, damaged, or incompatible with what the caller expects."""


class ModelDamagedError(ModelLoadError):
    """The directory is missing, truncated, unreadable or fails its checksums."""


class ModelIncompatibleError(ModelLoadError):
    """A readable model of another format version or for another channel set."""
