"""``navit train``: NaViT (or the square ViT baseline) on packed batches, resumable and seeded."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from navit_deploy.errors import ConfigError
from navit_deploy.model.config import NaViTConfig
from navit_deploy.model.navit import NaViT
from navit_deploy.model.weights import save_model
from navit_deploy.packing import PackedBatch
from navit_deploy.train.batches import LabeledImages, TrainStep, step_batches
from navit_deploy.train.checkpoint import load_train_state, save_train_state
from navit_deploy.train.config import TrainConfig


def pack_tensors(pack: PackedBatch) -> tuple[torch.Tensor, ...]:
    """The model's four inputs as torch tensors (shared memory with the numpy arrays)."""
    return tuple(torch.from_numpy(a) for a in pack.model_inputs().values())


class _Steps(IterableDataset):
    def __init__(self, data: LabeledImages, fe, tc: TrainConfig, next_index: int, carry: list[int]) -> None:
        self.args = (data, fe, tc, next_index, carry)

    def __iter__(self) -> Iterator[TrainStep]:
        return step_batches(*self.args)


def lr_at(tokens: int, tc: TrainConfig) -> float:
    """Linear warm-up then cosine decay, both measured in tokens processed."""
    if tokens < tc.warmup_tokens:
        return tc.lr * max(tokens, 1) / tc.warmup_tokens
    frac = min(1.0, (tokens - tc.warmup_tokens) / max(1, tc.total_tokens - tc.warmup_tokens))
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * frac))


def make_optimizer(model: NaViT, tc: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "pos_embed" in name or name.endswith("query") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.999))


@dataclass
class TrainResult:
    model: NaViT
    tokens_seen: int
    images_seen: int
    steps: int
    wall_s: float


def train(data: LabeledImages, model_cfg: NaViTConfig, tc: TrainConfig, out_dir: str | Path,
          *, resume: bool = True, progress: bool = True, workers: int = 1) -> TrainResult:
    """Train until ``tc.total_tokens`` tokens have been processed; checkpoint into ``out_dir/ckpt``.

    Writes the final ``model.safetensors`` + ``config.json`` and a ``train_log.json`` into ``out_dir``.
    A second call with the same ``out_dir`` resumes from the last checkpoint.
    """
    out = Path(out_dir)
    if (tc.mode == "vit") != bool(model_cfg.frontend.square_grid):
        raise ConfigError("mode 'vit' needs a square front end (frontend.square_grid > 0) and 'navit' a native one")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    model = NaViT(model_cfg).set_attention(tc.attention)
    opt = make_optimizer(model, tc)
    ckpt = out / "ckpt"
    state = {"tokens_seen": 0, "images_seen": 0, "steps": 0, "next_index": 0, "carry": [], "wall_s": 0.0, "log": []}
    if resume:
        restored = load_train_state(ckpt, model, opt)
        if restored is not None:
            if restored.get("train_config") != tc.to_dict() or restored.get("model_config") != model_cfg.to_dict():
                raise ConfigError(f"{ckpt}: checkpoint was written with a different config; use a new --out or --no-resume")
            state.update(restored)
    state["train_config"], state["model_config"] = tc.to_dict(), model_cfg.to_dict()
    if data is None or len(data) == 0:
        raise ConfigError("training data is empty")
    loader = DataLoader(_Steps(data, model_cfg.frontend, tc, state["next_index"], state["carry"]),
                        batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None)
    model.train()
    bar = tqdm(total=tc.total_tokens, initial=state["tokens_seen"], unit="tok", unit_scale=True,
               disable=not progress, desc=f"train {tc.mode}")
    t_start = time.time() - state["wall_s"]
    loss_avg = None
    for step in loader:
        if state["tokens_seen"] >= tc.total_tokens:
            break
        lr = lr_at(state["tokens_seen"], tc)
        for g in opt.param_groups:
            g["lr"] = lr
        logits = torch.cat([model(*pack_tensors(p))[1] for p in step.packs])
        loss = F.cross_entropy(logits, torch.from_numpy(step.labels), label_smoothing=tc.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        loss_val = float(loss.detach())
        loss_avg = loss_val if loss_avg is None else 0.98 * loss_avg + 0.02 * loss_val
        state["tokens_seen"] += step.tokens
        state["images_seen"] += int(step.labels.shape[0])
        state["steps"] += 1
        state["next_index"], state["carry"] = step.next_index, step.carry
        bar.update(step.tokens)
        bar.set_postfix(loss=f"{loss_avg:.3f}", lr=f"{lr:.2e}")
        if state["steps"] % 50 == 0:
            state["log"].append({"step": state["steps"], "tokens": state["tokens_seen"], "loss": round(loss_avg, 4)})
        if state["steps"] % tc.checkpoint_every == 0:
            state["wall_s"] = time.time() - t_start
            save_train_state(ckpt, model, opt, state)
    bar.close()
    state["wall_s"] = time.time() - t_start
    save_train_state(ckpt, model, opt, state)
    model.eval()
    save_model(model, out)
    (out / "train_log.json").write_text(json.dumps({k: state[k] for k in
                                                   ("tokens_seen", "images_seen", "steps", "wall_s", "train_config", "log")}, indent=1))
    return TrainResult(model, state["tokens_seen"], state["images_seen"], state["steps"], state["wall_s"])
