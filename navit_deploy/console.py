"""What long commands show on stderr: stage progress (tqdm) and no noise from libraries. Torch-free.

Progress goes to stderr only, so a command's stdout (``--json``) stays clean; it is on when stderr is a
terminal, unless asked for (``enabled=True``, e.g. ``--progress on``) or turned off.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from tqdm import tqdm


def progress_enabled(choice: str | bool | None = "auto", stream: IO[str] | None = None) -> bool:
    """``"on"``/True: always; ``"off"``/False: never; ``"auto"``/None: when ``stream`` (stderr) is a terminal."""
    if choice in ("on", True):
        return True
    if choice in ("off", False):
        return False
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Stage progress on stderr: one bar for a whole job, weighted by each stage's expected share of the
    time (so the estimate is not the mean of very unequal stages), and a second bar for the steps inside
    a stage. Disabled, every method is a no-op."""

    def __init__(self, title: str, total: float | None = None, enabled: bool = True,
                 stream: IO[str] | None = None) -> None:
        """``total``: the job's expected length in any unit (seconds measured on a reference machine suit
        the estimate best); None: no job bar, only :meth:`steps` bars."""
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._title = title
        self._bar = None
        self._stage_left = 0.0
        self._inner = 0 if total is None else 1
        if total is not None:
            fmt = "{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed, ~{remaining} left"
            self._bar = tqdm(total=total, desc=title, file=self.stream, disable=not enabled, bar_format=fmt,
                             position=0, leave=True, dynamic_ncols=True)

    def stage(self, name: str, weight: float = 0.0) -> None:
        """Name the stage that runs now (shown beside the job's bar); ``weight``: its share of the job's
        total, which :meth:`steps` inside it move the job bar through as they go."""
        self._stage_left = weight
        if self._bar is not None:
            self._bar.set_description_str(f"{self._title}: {name}")

    def advance(self, weight: float) -> None:
        """``weight`` more of the job is done."""
        if self._bar is not None:
            self._bar.update(min(weight, max(0.0, self._bar.total - self._bar.n)))

    def finish_stage(self) -> None:
        """The current stage ended: the job bar takes what its steps have not yet moved it by."""
        self.advance(self._stage_left)
        self._stage_left = 0.0

    @contextmanager
    def steps(self, name: str, total: int, unit: str = "step") -> Iterator[Any]:
        """A bar for ``total`` steps inside the current stage (``.update(k)``, ``.set_postfix_str``). Its
        estimate is the mean time per step so far (steps of one round of a benchmark differ a lot; over
        whole rounds the mean is right), and each step moves the job bar by its share of the stage."""
        share = self._stage_left / max(1, total)
        job = self

        class _Steps(tqdm):
            def update(self, n: float = 1) -> bool | None:  # noqa: D102
                moved = min(job._stage_left, share * n)
                job._stage_left -= moved
                job.advance(moved)
                return super().update(n)

        bar = _Steps(total=total, desc=name, unit=unit, file=self.stream, disable=not self.enabled,
                     position=self._inner, leave=self._bar is None, dynamic_ncols=True, smoothing=0)
        try:
            yield bar
        finally:
            bar.close()

    def write(self, message: str) -> None:
        """A line on stderr that does not break the bars."""
        if self.enabled:
            tqdm.write(message, file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


TORCHVISION_LOGGER = "torch.onnx._internal.exporter._registration"


@contextmanager
def without_torchvision_warning() -> Iterator[None]:
    """Around ``torch.onnx.export``: drop its ``torchvision is not installed. Skipping torchvision::nms``
    warnings (four per export: it looks for torchvision's detection ops, which a NaViT never uses).
    Only that message of that logger; every other warning still shows."""
    log = logging.getLogger(TORCHVISION_LOGGER)
    flt = _DropMessage("torchvision is not installed")
    log.addFilter(flt)
    try:
        yield
    finally:
        log.removeFilter(flt)
