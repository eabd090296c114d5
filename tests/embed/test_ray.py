"""``navit embed --ray``: Ray Data gives the single-process rows, and a killed actor loses nothing."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray Data is not installed (pip install -e '.[scale]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install -e '.[scale]')")

from navit_deploy.embed.local import embed_files  # noqa: E402
from navit_deploy.embed.ray_embed import embed_with_ray  # noqa: E402
from navit_deploy.embed.store import read_embeddings  # noqa: E402
from tests.embed.ray_helpers import VictimEmbedBatch  # noqa: E402

BATCH = 8


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the module (starting one costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def single_process(images, model, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("local") / "e.parquet"
    embed_files([str(p) for p in images], model, out, batch_size=BATCH, progress=False)
    return {r["path"]: r for r in read_embeddings(out).to_pylist()}


def _assert_same_rows(out, single_process) -> None:
    rows = read_embeddings(out).to_pylist()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) and set(paths) == set(single_process)  # every input exactly once
    for r in rows:
        ref = single_process[r["path"]]
        assert (r["tokens"], r["grid"], r["error_type"]) == (ref["tokens"], ref["grid"], ref["error_type"])
        if ref["embedding"] is not None:
            assert np.abs(np.asarray(r["embedding"]) - np.asarray(ref["embedding"])).max() <= 1e-6


def test_ray_rows_equal_the_single_process_rows(ray_cluster, images, model, single_process, tmp_path):
    paths = [str(p) for p in images]
    summary = embed_with_ray(paths, model, tmp_path / "e.parquet", actors=2, batch_size=BATCH, progress=False)
    assert (summary.engine, summary.embedded, summary.failed) == ("ray", len(paths), 2)
    _assert_same_rows(tmp_path / "e.parquet", single_process)
    again = embed_with_ray(paths, model, tmp_path / "e.parquet", actors=2, batch_size=BATCH, progress=False)
    assert (again.skipped, again.embedded) == (len(paths), 0)


def test_a_killed_actor_loses_nothing(ray_cluster, images, model, single_process, tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    killed: list[int] = []

    def kill_the_victim() -> None:
        deadline = time.monotonic() + 120
        while not (control / "victim.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # no event crosses the process boundary: the actor's pid file appears
        pid = int((control / "victim.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_the_victim, daemon=True)
    killer.start()
    paths = [str(p) for p in images]
    summary = embed_with_ray(paths, model, tmp_path / "e.parquet", actors=1, batch_size=BATCH, progress=False,
                             actor_cls=VictimEmbedBatch, actor_kwargs={"control": str(control)})
    killer.join(10)
    assert killed, "the victim actor was never killed"
    actors = set((control / "actors.log").read_text().split())
    assert str(killed[0]) in actors and len(actors) >= 2  # the pool's one actor died and Ray restarted it
    assert summary.embedded == len(paths)
    _assert_same_rows(tmp_path / "e.parquet", single_process)
