"""Deterministic training batches: resolution sampling, token dropping and packing, decided per image index.

Every random choice for image ``i`` comes from ``default_rng([seed, i])``, so a resumed run sees exactly
the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
from PIL import Image

from navit_deploy.frontend import FrontendConfig, PreparedImage, prepare_pil
from navit_deploy.packing import PackedBatch, build_pack, first_fit_decreasing
from navit_deploy.train.config import TrainConfig


class LabeledImages(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[Image.Image, int]: ...


def prepare_training_image(img: Image.Image, index: int, fe: FrontendConfig, tc: TrainConfig) -> PreparedImage:
    """Apply the mode's resize; in NaViT mode sample the budget and drop tokens for this image."""
    if tc.mode == "vit":
        return prepare_pil(img, fe)  # fe.square_grid fixes the size
    rng = np.random.default_rng([tc.seed, 1, index])
    budget = int(rng.integers(tc.min_patches, fe.max_patches + 1))
    prepared = prepare_pil(img, fe.replace(max_patches=budget))
    rate = tc.drop_max * float(rng.beta(*tc.drop_beta))
    n = prepared.num_tokens
    keep_n = max(1, int(round(n * (1.0 - rate))))
    if keep_n < n:
        keep = np.sort(rng.choice(n, size=keep_n, replace=False))
        prepared = prepared.keep_tokens(keep)
    return prepared


@dataclass
class TrainStep:
    packs: list[PackedBatch]
    labels: np.ndarray  # [B_total] in the order images appear across packs
    tokens: int
    next_index: int
    carry: list[int]


def step_batches(data: LabeledImages, fe: FrontendConfig, tc: TrainConfig, next_index: int,
                 carry: list[int]) -> Iterator[TrainStep]:
    """Yield training steps forever, each filling ``packs_per_step`` packs by first-fit-decreasing.

    Images that do not fit a step are carried to the next one (``carry``), so little is padded.
    """
    cache: dict[int, tuple[PreparedImage, int]] = {}

    def get(i: int) -> tuple[PreparedImage, int]:
        if i not in cache:
            img, label = data[i % len(data)]
            cache[i] = (prepare_training_image(img, i, fe, tc), label)
        return cache[i]

    capacity = tc.packs_per_step * tc.pack_len
    while True:
        chosen = list(carry)
        tokens = sum(get(i)[0].num_tokens for i in chosen)
        while tokens < capacity:
            n = get(next_index)[0].num_tokens
            chosen.append(next_index)
            next_index += 1
            tokens += n
        bins = first_fit_decreasing([get(i)[0].num_tokens for i in chosen], tc.pack_len, tc.max_images)
        keep, carry = bins[: tc.packs_per_step], [chosen[j] for b in bins[tc.packs_per_step:] for j in b]
        packs, labels = [], []
        for b in keep:
            ids = [chosen[j] for j in b]
            packs.append(build_pack([get(i)[0] for i in ids], ids, tc.pack_len))
            labels.extend(get(i)[1] for i in ids)
        for i in [i for i in cache if i not in carry]:
            del cache[i]
        yield TrainStep(packs, np.asarray(labels, dtype=np.int64), sum(p.num_valid for p in packs), next_index, list(carry))
