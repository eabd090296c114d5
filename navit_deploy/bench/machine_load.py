"""How busy the machine was during a benchmark, apart from the benchmark itself. Torch-free.

Load averages count the benchmark's own threads too, so they alone cannot say whether other jobs
competed for the CPUs. The CPU time all processes used (``/proc/stat``) less the benchmark's own
(``os.times``), over the wall time and the CPU count, can: it is the share of the machine others took.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

# Others taking more than this share of the CPUs marks the run as busy: its figures are then lower and
# noisier than the machine can do. (A load average above the CPU count is not the test: it counts the
# benchmark's own threads, and in navit deploy the stages before the benchmark.)
BUSY_OTHERS_SHARE = 0.25


def _system_busy_s() -> float | None:
    """CPU seconds all CPUs spent busy since boot (Linux ``/proc/stat``), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already counted in user/nice]
    busy = sum(ticks[i] for i in (0, 1, 2, 5, 6, 7) if i < len(ticks))
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@dataclass
class LoadMonitor:
    """``start()`` before a run, ``stop()`` after: load averages, CPU count and the others' CPU share."""

    wall: float = 0.0
    system: float | None = None
    own: float = 0.0
    before: list[float] | None = None

    def start(self) -> "LoadMonitor":
        self.wall, self.system, self.own, self.before = time.perf_counter(), _system_busy_s(), _own_cpu_s(), _loadavg()
        return self

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall
        system, own = _system_busy_s(), _own_cpu_s() - self.own
        cpus = os.cpu_count() or 1
        others = None
        if system is not None and self.system is not None and wall > 0:
            others = max(0.0, min(1.0, (system - self.system - own) / (wall * cpus)))
        after = _loadavg()
        busy = others is not None and others > BUSY_OTHERS_SHARE
        return {"cpu_count": cpus, "load_before": self.before, "load_after": after,
                "others_cpu_share": None if others is None else round(others, 3), "own_cpu_s": round(own, 1),
                "wall_s": round(wall, 1), "busy": busy}


def describe_load(load: dict[str, Any] | None) -> str:
    """One sentence for a report: the machine's load during the run, and a warning when it was busy."""
    if not load:
        return ""
    la = lambda v: "/".join(f"{x:g}" for x in v) if v else "n/a"  # noqa: E731
    others = load.get("others_cpu_share")
    text = (f"Machine load: {load['cpu_count']} CPUs; load average (1/5/15 min) {la(load.get('load_before'))} before, "
            f"{la(load.get('load_after'))} after the run (these count the benchmark's own threads too); other "
            f"processes used {'n/a' if others is None else f'{others:.0%}'} of the CPUs meanwhile.")
    if load.get("busy"):
        text += (" **Warning: the machine was busy with other work during this run; throughput is lower and "
                 "rounds vary more than on an idle machine. Rerun on a quiet machine for figures to quote.**")
    return text
