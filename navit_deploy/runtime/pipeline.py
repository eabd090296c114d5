"""Images in, per-image results out: front end -> packer -> runner -> unpack. Torch-free.

Bad images (undecodable, too large, impossible budget) become error results for that image alone;
every other image of the call is still processed and returned in the caller's order.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from navit_deploy.errors import ImageError
from navit_deploy.frontend import FrontendConfig, ImageSource, PreparedImage, describe_source, prepare_image
from navit_deploy.frontend.loading import ChannelOrder
from navit_deploy.packing import PackedBatch, Packer
from navit_deploy.runtime.results import ImageResult
from navit_deploy.runtime.runner import Runner


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class PipelineStats:
    """Counters for the last call: packs run, tokens computed (incl. padding) and valid tokens."""

    packs: int = 0
    computed_tokens: int = 0
    valid_tokens: int = 0
    images: int = 0
    failed: int = 0

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.computed_tokens else 1.0 - self.valid_tokens / self.computed_tokens


@dataclass
class Pipeline:
    """Runs images through a runner at their native aspect ratio.

    ``channel_order`` applies to numpy frames ("BGR" for OpenCV). ``packer`` sets the pack length per
    backend (e.g. smaller packs for the dense attention lowering on CPU).
    """

    runner: Runner
    frontend: FrontendConfig
    packer: Packer = field(default_factory=Packer)
    channel_order: ChannelOrder = "RGB"
    workers: int = field(default_factory=_default_workers)
    stats: PipelineStats = field(default_factory=PipelineStats)

    def prepare(self, index: int, src: ImageSource) -> PreparedImage | ImageResult:
        """Front end for one image; an error result instead of an exception for a bad image."""
        name = describe_source(src)
        try:
            prepared = prepare_image(src, self.frontend, channel_order=self.channel_order)
        except ImageError as exc:
            return ImageResult(index, name, error=str(exc), error_type=type(exc).__name__)
        if prepared.num_tokens > self.packer.pack_len:
            return ImageResult(index, name, error=f"{name}: {prepared.num_tokens} tokens exceed the pack length "
                               f"{self.packer.pack_len}; lower the budget or raise the pack length",
                               error_type="BudgetError")
        return prepared

    def _prepare_many(self, sources: Sequence[ImageSource]) -> list[PreparedImage | ImageResult]:
        if self.workers <= 1 or len(sources) <= 1:
            return [self.prepare(i, s) for i, s in enumerate(sources)]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.prepare, range(len(sources)), sources))

    def run_pack(self, pack: PackedBatch, prepared: dict[int, PreparedImage], names: dict[int, str]) -> list[ImageResult]:
        """Infer one pack and unpack its rows into results keyed by the caller's indices."""
        out = self.runner.infer(pack)
        self.stats.packs += 1
        self.stats.computed_tokens += pack.pack_len
        self.stats.valid_tokens += pack.num_valid
        results = []
        for row, idx in enumerate(pack.image_index.tolist()):
            p = prepared[idx]
            results.append(ImageResult(idx, names[idx], embedding=out.embeddings[row], logits=out.logits[row],
                                       tokens=p.num_tokens, grid=p.grid, resized_size=p.resized_size,
                                       original_size=p.original_size))
        return results

    def run(self, sources: Sequence[ImageSource]) -> list[ImageResult]:
        """Process ``sources`` (paths, bytes, PIL images, numpy frames); one result per input, in order."""
        self.stats = PipelineStats(images=len(sources))
        prepared_or_err = self._prepare_many(sources)
        names = {i: describe_source(s) for i, s in enumerate(sources)}
        results: list[ImageResult | None] = [None] * len(sources)
        good: dict[int, PreparedImage] = {}
        for i, r in enumerate(prepared_or_err):
            if isinstance(r, ImageResult):
                results[i] = r
                self.stats.failed += 1
            else:
                good[i] = r
        if good:
            order = list(good)
            for pack in self.packer.pack([good[i] for i in order], order):
                for res in self.run_pack(pack, good, names):
                    results[res.index] = res
        return [r for r in results if r is not None]

    def stream(self, sources: Iterable[ImageSource], buffer: int = 16, min_fill: float = 0.9) -> Iterator[ImageResult]:
        """Results for an unbounded stream (e.g. a camera), in input order, holding at most ``buffer`` images.

        Smaller ``buffer``/``min_fill`` lower latency; larger ones lower padding.
        """
        self.stats = PipelineStats()
        prepared: dict[int, PreparedImage] = {}
        names: dict[int, str] = {}
        done: dict[int, ImageResult] = {}
        next_out = 0

        def items() -> Iterator[tuple[int, PreparedImage]]:
            for i, src in enumerate(sources):
                self.stats.images += 1
                names[i] = describe_source(src)
                r = self.prepare(i, src)
                if isinstance(r, ImageResult):
                    self.stats.failed += 1
                    done[i] = r
                    continue
                prepared[i] = r
                yield i, r

        for pack in self.packer.stream(items(), buffer=buffer, min_fill=min_fill):
            for res in self.run_pack(pack, prepared, names):
                done[res.index] = res
                prepared.pop(res.index, None)
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
        while next_out in done:
            yield done.pop(next_out)
            next_out += 1
