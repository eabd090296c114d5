"""Latency-bounded packing of an unbounded stream (a camera feed). Torch-free.

A stream has no end to wait for, so every frame needs a bound on how long it may wait for pack-mates:
:class:`StreamPolicy` sets it in later inputs (``max_delay_frames``) and in time (``max_delay_ms``), and caps
the frames held at once (``buffer``). :class:`StreamPacker` holds the frames not yet packed and says which
packs to run now: those filled to ``min_fill``, those holding a frame whose delay is up, and, when the
caller holds ``buffer`` frames, the one holding the oldest frame. Frames are never carried indefinitely,
so results can be released in input order without one short-of-full pack holding back the whole stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from navit_deploy.errors import ConfigError
from navit_deploy.packing.packer import Packable, PackedBatch, Packer, first_fit_decreasing


@dataclass(frozen=True)
class StreamPolicy:
    """How long a frame may wait for pack-mates, and how many frames a stream may hold.

    ``buffer``: the most inputs held at once (pulled from the source, result not yet handed back), the
    frames waiting for pack-mates and the results waiting for an earlier frame included.
    ``max_delay_frames``: a frame is packed before more than this many later inputs arrive (default:
    ``buffer``). ``max_delay_ms``: a frame waits at most this long for pack-mates that have not arrived yet
    (time spent in the model comes on top); the default 0 runs whatever is ready as soon as nothing more
    is, so frames share packs only when they queue up. ``min_fill``: a pack filled to this fraction of its
    capacity runs at once (it matters only with a delay above 0).
    """

    buffer: int = 8
    min_fill: float = 0.9
    max_delay_frames: int | None = None
    max_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.buffer < 1:
            raise ConfigError(f"stream buffer must be >= 1 frame, got {self.buffer}")
        if not 0.0 <= self.min_fill <= 1.0:
            raise ConfigError(f"min_fill must be in [0, 1], got {self.min_fill}")
        if self.max_delay_frames is not None and self.max_delay_frames < 0:
            raise ConfigError(f"max_delay_frames must be >= 0, got {self.max_delay_frames}")
        if not self.max_delay_ms >= 0:  # also refuses NaN
            raise ConfigError(f"max_delay_ms must be >= 0, got {self.max_delay_ms}")

    @property
    def delay_frames(self) -> int:
        return self.buffer if self.max_delay_frames is None else self.max_delay_frames


@dataclass(frozen=True)
class _Pending:
    index: int
    item: Packable
    arrival: int  # inputs seen when it arrived (its own included)
    since: float  # arrival time, seconds (any monotonic clock)


class StreamPacker:
    """The frames of a stream not yet packed, and the decision which packs to run now.

    The caller adds each prepared frame with :meth:`add`, then asks :meth:`take_ready` for the packs to run;
    :meth:`deadline` says when a waiting frame's time is up (the caller waits for new frames until then).
    """

    def __init__(self, packer: Packer, policy: StreamPolicy) -> None:
        self.packer = packer
        self.policy = policy
        self._pending: list[_Pending] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, index: int, item: Packable, seen: int, now: float) -> None:
        """Frame ``index`` arrived as the ``seen``-th input at time ``now`` (seconds)."""
        self._pending.append(_Pending(index, item, seen, now))

    def deadline(self) -> float | None:
        """When the oldest waiting frame's ``max_delay_ms`` is up (None when nothing waits)."""
        if not self._pending:
            return None
        return min(p.since for p in self._pending) + self.policy.max_delay_ms / 1000.0

    def _overdue(self, p: _Pending, seen: int, now: float) -> bool:
        return (seen - p.arrival >= self.policy.delay_frames
                or (now - p.since) * 1000.0 >= self.policy.max_delay_ms)

    def take_ready(self, seen: int, now: float, *, full: bool = False) -> list[PackedBatch]:
        """The packs to run now, removed from the waiting frames. Call it after adding every frame that is
        ready, so that frames arriving together share packs.

        ``seen``: inputs pulled so far; ``now``: the time. ``full``: the caller holds ``buffer`` frames, so no
        more can arrive until results go out: the pack holding the oldest frame runs. A frame is overdue after
        ``max_delay_frames`` later inputs or ``max_delay_ms`` (with a zero delay it never waits for frames
        that are not ready yet).
        """
        if not self._pending:
            return []
        bins = first_fit_decreasing([p.item.num_tokens for p in self._pending], self.packer.pack_len,
                                    self.packer.max_images)
        cap = self.min_tokens()
        oldest = min(range(len(self._pending)), key=lambda i: self._pending[i].arrival)
        chosen = []
        for b in bins:
            filled = sum(self._pending[i].item.num_tokens for i in b) >= cap or len(b) >= self.packer.max_images
            late = any(self._overdue(self._pending[i], seen, now) for i in b)
            if filled or late or (full and oldest in b):
                chosen.append(b)
        return self._emit(chosen)

    def flush(self) -> list[PackedBatch]:
        """Every waiting frame, packed (the end of the stream)."""
        if not self._pending:
            return []
        return self._emit(first_fit_decreasing([p.item.num_tokens for p in self._pending], self.packer.pack_len,
                                               self.packer.max_images))

    def min_tokens(self) -> int:
        """Tokens at which a pack counts as full (``min_fill`` of the capacity, at least one token)."""
        return max(1, math.ceil(self.policy.min_fill * self.packer.pack_len))

    def _emit(self, bins: list[list[int]]) -> list[PackedBatch]:
        # Oldest frame first, so the results the caller must release in order come back soonest.
        bins = sorted(bins, key=lambda b: min(self._pending[i].arrival for i in b))
        packs = [self.packer.build([self._pending[i].item for i in b], [self._pending[i].index for i in b])
                 for b in bins]
        used = {i for b in bins for i in b}
        self._pending = [p for i, p in enumerate(self._pending) if i not in used]
        return packs


def stream_packs(packer: Packer, items: Iterable[tuple[int, Packable]], policy: StreamPolicy) -> Iterator[PackedBatch]:
    """Pack an unbounded iterable of ``(index, item)`` pairs under ``policy``'s frame bounds (no clock: an
    iterable cannot be waited on). At most ``policy.buffer`` items wait at a time; each waits for at most
    ``policy.delay_frames`` later items. Everything left is flushed when the iterable ends."""
    sp = StreamPacker(packer, replace(policy, max_delay_ms=math.inf))
    seen = 0
    for index, item in items:
        seen += 1
        sp.add(index, item, seen, 0.0)
        yield from sp.take_ready(seen, 0.0, full=len(sp) >= policy.buffer)
    yield from sp.flush()
