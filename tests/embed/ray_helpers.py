"""An actor for the fault test: the first batch any of its instances gets, it reports its pid and waits,
mid-batch, for the test to kill it. Imported by Ray's workers (the package root is on their PYTHONPATH)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from navit_deploy.embed.ray_embed import EmbedBatch


class VictimEmbedBatch(EmbedBatch):
    def __init__(self, *args, control: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.control = Path(control)
        with open(self.control / "actors.log", "a") as f:
            f.write(f"{os.getpid()}\n")

    def __call__(self, batch):
        try:
            os.close(os.open(self.control / "victim.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:  # someone was the victim already: work normally
            return super().__call__(batch)
        tmp = self.control / ".victim.pid"
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, self.control / "victim.pid")
        time.sleep(120)  # killed here, with this batch in flight
        return super().__call__(batch)
