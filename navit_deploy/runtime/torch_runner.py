"""The PyTorch reference runner. torch is imported only when the runner is activated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from navit_deploy.runtime.runner import PackLimits, Runner, RunnerOutput


class TorchRunner(Runner):
    """Runs a NaViT (a module, a model directory, or ``"builtin"``) in eval mode on CPU or CUDA."""

    name = "torch"

    def __init__(self, model: Any = "builtin", attention: str = "dense", device: str = "cpu",
                 limits: PackLimits | None = None) -> None:
        from navit_deploy.model.weights import load_model  # noqa: PLC0415 - keeps torch out of runtime imports

        self.model = load_model(model, attention) if isinstance(model, (str, Path)) else model
        self.model.set_attention(attention).eval()
        self.device = device
        super().__init__(self.model.config.patch_dim, limits)
        c = self.model.config
        self.input_names = c.inputs
        self.output_kind, self.windows = c.output, c.windows

    def _activate(self) -> None:
        self.model.to(self.device)

    def _infer(self, feed: dict[str, np.ndarray]) -> RunnerOutput:
        import torch  # noqa: PLC0415

        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feed[n])).to(self.device) for n in self.input_names]
            outs = self.model(*args)
        if self.output_kind == "tokens":
            return RunnerOutput(None, None, outs[0].float().cpu().numpy())
        logits = outs[1].float().cpu().numpy() if len(outs) > 1 else None
        return RunnerOutput(outs[0].float().cpu().numpy(), logits)
