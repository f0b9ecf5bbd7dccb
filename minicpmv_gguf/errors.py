"""The toolkit's error types: each one is a problem the user can fix, printed on one line by the CLI."""

from __future__ import annotations


class ToolkitError(Exception):
    """A problem the user can fix; the message names the file and the problem."""


class CheckpointError(ToolkitError):
    """The Hugging Face checkpoint is missing a file, is corrupt, or is not MiniCPM-V 4.6."""


class TensorMapError(CheckpointError):
    """Checkpoint tensors that no rule maps, or that do not have the shape the config implies."""


class TokenizerError(CheckpointError):
    """The tokenizer files are missing, unreadable, or do not fit the model."""


class OutputError(ToolkitError):
    """The output path cannot be written (exists, unwritable directory, disk full)."""


class QuantizeError(ToolkitError):
    """A quantization request llama.cpp cannot carry out (type, imatrix, input), or that it rejected."""
