"""The pack's documented error classes.

Every error a user can cause is raised as a subclass of :class:`UNetLabError`
with a message that names the file or node and the cause. Nothing else is meant
to escape the pack's public functions: a bare ``RuntimeError`` from deep inside
torch is a bug.
"""

from __future__ import annotations

from pathlib import Path


class UNetLabError(Exception):
    """Base class of every error the pack raises on purpose."""


class CheckpointError(UNetLabError):
    """A weight file cannot be read, or is not what the caller asked for."""

    def __init__(self, path: str | Path | None, cause: str) -> None:
        self.path = None if path is None else str(path)
        self.cause = cause
        where = f"{Path(self.path).name}: " if self.path else ""
        super().__init__(f"{where}{cause}" + (f" (file: {self.path})" if self.path else ""))


class FamilyMismatchError(UNetLabError):
    """Weights of one model family were offered to a model of another."""

    def __init__(self, expected: str, got: str, what: str = "") -> None:
        self.expected, self.got = expected, got
        prefix = f"{what}: " if what else ""
        super().__init__(f"{prefix}the model is {expected} but the file is {got}")


class InputError(UNetLabError):
    """A node or function input is out of what it accepts (shape, dtype, range)."""


class LoraError(UNetLabError):
    """A LoRA file or patch cannot be applied."""


class BlockSpecError(UNetLabError):
    """A LoRA block-weight specification cannot be parsed or does not fit."""


class GateError(UNetLabError):
    """Attention-gate settings or weights do not fit the model."""


class SegmentationError(UNetLabError):
    """A segmentation model, checkpoint or dataset cannot be used."""


class WorkflowError(UNetLabError):
    """A workflow file or prompt is malformed (not JSON, neither format, a cycle...)."""


class PromptValidationError(UNetLabError):
    """A prompt failed validation; ``report`` holds ComfyUI-style per-node errors."""

    def __init__(self, message: str, report: dict) -> None:
        self.report = report
        super().__init__(message)


class NodeExecutionError(UNetLabError):
    """A node raised while executing; names the node id and class."""

    def __init__(self, node_id: str, class_type: str, cause: BaseException) -> None:
        self.node_id, self.class_type, self.cause = node_id, class_type, cause
        super().__init__(f"node {node_id} ({class_type}) failed: {cause}")


class HostError(UNetLabError):
    """The host cannot do what a node asked (missing model folder, file outside it...)."""
