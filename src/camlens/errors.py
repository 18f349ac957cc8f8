"""Errors camlens raises for bad input: each carries a one-line message meant for a person."""

from __future__ import annotations


class CamlensError(Exception):
    """A problem with the user's input (file, model, layer, target...), stated in one line.

    The CLI prints ``str(error)`` and no traceback; library users can catch this one class.
    """


class ImageError(CamlensError):
    """An image file could not be read: missing, not an image, truncated or unsupported."""


class ImageTooLarge(ImageError):
    """An image has more pixels than the reader accepts (refused from its header, undecoded)."""


class ModelError(CamlensError):
    """A model could not be built or its weights could not be loaded."""


class ModelFailure(ModelError):
    """The model's own code failed on its input (a wrong number of channels, a dtype it does
    not take, an exception of its own, which is the ``__cause__``)."""


class LayerError(CamlensError):
    """A target layer name or module does not exist in the model, or cannot be used."""


class TargetError(CamlensError):
    """A target class (index or name) does not exist in the model's labels."""


class MethodError(CamlensError):
    """A CAM method is unknown, or cannot be applied to this model or layer."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM stopped the process (not an input error: a :class:`BaseException`, so
    that nothing in between mistakes it for a failure). ``signal`` is the signal's number."""

    def __init__(self, signal: int) -> None:
        super().__init__(signal)
        self.signal = signal
