"""``navit embed --ray``: the same rows, produced by Ray Data on a Ray cluster (a local one by default).

The paths still to embed become a dataset; ``map_batches`` runs them through a fixed pool of actors,
each holding one runner for its lifetime (ONNX Runtime CPU here; CUDA or TensorRT on GPU nodes) and
running each batch with :meth:`Pipeline.run`, so images are packed inside each batch by the project's
packer; Ray writes the Parquet parts. Fault tolerance is Ray's: Ray Data restarts a dead actor and
retries its batch (``max_restarts``/``max_task_retries`` are unlimited for actor pools by default), so a
killed worker loses nothing. Resuming works as in the single-process run: paths already in the output
folder are skipped.

Workers import ``navit_deploy`` from the same place as the driver (its folder goes first on the
workers' ``PYTHONPATH``; on a multi-node cluster, install the package on every node instead).
Image paths must be readable where the actors run (one machine, or a shared filesystem).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from navit_deploy.embed import DEFAULT_BATCH
from navit_deploy.embed.local import EmbedSummary, even_batches, model_artifact, output_metadata, resume_state
from navit_deploy.embed.table import results_table
from navit_deploy.errors import BackendUnavailableError
from navit_deploy.frontend import FrontendConfig


class EmbedBatch:
    """A Ray Data actor: opens the model once, then embeds one batch of paths per call."""

    def __init__(self, model_path: str, metadata: dict[str, Any], provider: str = "cpu",
                 frontend: dict[str, Any] | None = None, threads: int | None = None) -> None:
        from navit_deploy.runtime.open import open_runner, pipeline_for

        threads = threads or _assigned_cpus()
        self.runner, artifact = open_runner(model_path, provider=provider, threads=threads)
        artifact.require_pooled("embedding files into a table")
        self.runner.concurrency = max(1, min(self.runner.concurrency, threads))
        self.runner.activate()
        fe = FrontendConfig.from_dict(frontend) if frontend else None
        self.pipeline = pipeline_for(self.runner, artifact, frontend=fe)
        self.metadata = metadata
        self.dim = int(metadata["dim"])

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = [str(p) for p in batch.column("path").to_pylist()]
        return results_table(paths, self.pipeline.run(paths), self.dim, self.metadata)


def _assigned_cpus() -> int:
    """CPUs Ray gave this actor (at least 1)."""
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1) + 0.5))


#: CPUs left free on each node for Ray Data's write tasks (0.1 CPU each): with every CPU held by an actor
#: they would wait until the actors finish, and no part would reach disk before the end of the run.
WRITE_HEADROOM = 0.5


def default_cpus_per_actor(actors: int) -> float:
    """The cluster's CPUs shared equally among ``actors``, at most one node's, minus the writers' headroom."""
    import ray

    nodes = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive", True)]
    largest = max(nodes, default=1.0)
    total = float(ray.cluster_resources().get("CPU", largest))
    return max(0.25, min(largest - WRITE_HEADROOM, (total - WRITE_HEADROOM * len(nodes)) / max(1, actors)))


def package_pythonpath() -> str:
    """``PYTHONPATH`` for workers: the folder this ``navit_deploy`` was imported from, then the driver's."""
    import navit_deploy

    root = str(Path(navit_deploy.__file__).resolve().parent.parent)
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (``None``/``"local"``: start a local cluster). True if this call started Ray
    (the caller shuts it down)."""
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError("navit embed --ray needs Ray Data: pip install 'navit-deploy[scale]'") from exc
    if ray.is_initialized():
        return False
    local = address in (None, "", "local")
    ray.init(address=None if local else address, num_cpus=num_cpus if local else None,
             include_dashboard=False, configure_logging=True, logging_level="warning", log_to_driver=True)
    return True


def embed_with_ray(paths: Sequence[str], model_path: str | os.PathLike[str], out: str | os.PathLike[str],
                   address: str | None = None, actors: int = 1, cpus_per_actor: float | None = None,
                   gpus_per_actor: float = 0.0, batch_size: int = DEFAULT_BATCH, provider: str = "cpu",
                   frontend: FrontendConfig | None = None, progress: bool = True,
                   actor_cls: type = EmbedBatch, actor_kwargs: dict[str, Any] | None = None) -> EmbedSummary:
    """Embed ``paths`` into ``out`` with Ray Data, skipping paths ``out`` already holds.

    ``actors``: the fixed actor pool's size. ``cpus_per_actor`` (default: :func:`default_cpus_per_actor`)
    also sets each actor's ONNX Runtime threads (rounded, at least 1); ``gpus_per_actor`` > 0 puts actors on GPU
    nodes (use ``provider="cuda"`` or an engine). ``actor_cls``/``actor_kwargs``: the actor and further
    arguments of its constructor (a subclass of :class:`EmbedBatch`, e.g. for tests).
    """
    import ray
    import ray.data

    artifact = model_artifact(model_path)
    metadata = output_metadata(model_path, artifact, frontend)
    store, state, todo = resume_state(out, paths, metadata)
    t0 = time.perf_counter()
    started = init_ray(address)
    try:
        startup_s = time.perf_counter() - t0
        cpus = cpus_per_actor or default_cpus_per_actor(actors)
        threads = max(1, int(cpus + 0.5))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        if todo:
            # One block per batch, cut where the single-process run cuts (both split evenly, as from_items
            # does), and one block per actor call: the same images share the same packs as there, so the
            # two runs give the same embeddings.
            ds = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=len(even_batches(len(todo),
                                                                                                   batch_size)))
            ds = ds.map_batches(
                actor_cls, batch_size=None, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus_per_actor or None,
                fn_constructor_kwargs={"model_path": str(Path(model_path).resolve()), "metadata": metadata,
                                       "provider": provider,
                                       "frontend": frontend.to_dict() if frontend else None, "threads": threads,
                                       **(actor_kwargs or {})},
                runtime_env={"env_vars": {"PYTHONPATH": package_pythonpath()}})
            ds.write_parquet(str(Path(out).resolve()), ray_remote_args={"num_cpus": 0.1})
    finally:
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - t0
    after = store.scan(metadata)
    failed = _count_failed(out, set(todo))
    return EmbedSummary(str(out), "ray", len(paths), len(paths) - len(todo), len(todo), failed,
                        after.parts - state.parts, round(seconds, 3),
                        round(len(todo) / seconds, 2) if todo and seconds > 0 else 0.0, state.broken,
                        {"actors": actors, "cpus_per_actor": round(cpus, 3), "threads_per_actor": threads,
                         "gpus_per_actor": gpus_per_actor,
                         "ray_startup_s": round(startup_s, 3), "run_s": round(seconds - startup_s, 3),
                         "address": address or "local"})


def _count_failed(out: str | os.PathLike[str], paths: set[str]) -> int:
    import pyarrow.compute as pc

    from navit_deploy.embed.store import read_embeddings

    table = read_embeddings(out).select(["path", "error_type"])
    mine = table.filter(pc.is_in(table.column("path"), pa.array(sorted(paths), pa.string())))
    return int(pc.sum(pc.is_valid(mine.column("error_type"))).as_py() or 0)
