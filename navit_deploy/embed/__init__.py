"""Batch embedding of large collections (``navit embed``): one Parquet row per input, resumable.

Sits above the runtime and imports it; the runtime never imports this package. Torch-free. Needs
pyarrow (single process) and Ray Data for ``--ray`` (the ``scale`` extra).

* :mod:`~navit_deploy.embed.inputs`: folders, globs and path lists into a stable list of paths;
* :mod:`~navit_deploy.embed.table`: the rows (path, embedding, tokens, grid, error_type, error);
* :mod:`~navit_deploy.embed.store`: the output folder of atomically committed parts, and resuming;
* :mod:`~navit_deploy.embed.local`: one process, :meth:`Pipeline.run` per batch;
* :mod:`~navit_deploy.embed.ray_embed`: Ray Data, an actor pool of runners.
"""

#: Paths per batch (one Pipeline.run, one Parquet part): what a crash can lose, and how often progress moves.
DEFAULT_BATCH = 128
