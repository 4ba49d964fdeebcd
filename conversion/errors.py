"""Errors of the conversion pipeline."""

from __future__ import annotations


class ConversionError(Exception):
    """The source cannot be converted; `message` says why in words an operator can act on.

    These are permanent: retrying the same input gives the same answer.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TorchUnavailable(ConversionError):
    """A TorchScript source needs the optional `torch` extra, which is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "converting TorchScript (.pt) models needs the server's optional `torch` extra, "
            "which is not installed; export the model to ONNX and upload the .onnx file instead"
        )
