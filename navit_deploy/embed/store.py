"""The output of ``navit embed``: a folder of Parquet parts (a Parquet dataset, as Ray, Spark and pyarrow
write and read them), one part per batch. Torch-free (needs pyarrow).

Every part is written to a hidden temporary file, flushed to disk and renamed into place, so a part is
either complete or absent: a crash loses at most the batch in flight, and a resumed run skips every path
some complete part already holds, so no path is written twice. A part that cannot be read (a file cut
off by another writer's crash) is moved aside as ``_broken.<name>`` and its paths are embedded again.
Files whose names start with ``.`` or ``_`` are not part of the dataset (pyarrow's rule), so readers never
see a part being written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from navit_deploy.embed.table import METADATA_KEY, same_model
from navit_deploy.errors import ConfigError

PART_RE = re.compile(r"^part-(\d+)\.parquet$")


def dataset_files(root: str | os.PathLike[str]) -> list[Path]:
    """The dataset's Parquet files, sorted by name (hidden and ``_`` files excluded)."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir()
                  if p.suffix == ".parquet" and p.is_file() and not p.name.startswith((".", "_")))


def read_embeddings(root: str | os.PathLike[str]) -> pa.Table:
    """Every row of an embed output folder, parts in name order (the input order of a single-process run)."""
    files = dataset_files(root)
    if not files:
        raise ConfigError(f"{root}: no Parquet parts here")
    tables = [pq.read_table(f) for f in files]
    schema = tables[0].schema.remove_metadata()
    return pa.concat_tables([t.replace_schema_metadata(None).cast(schema) for t in tables])


@dataclass
class StoreState:
    """What an output folder already holds: the paths written, the model that wrote them, its parts."""

    done: set[str] = field(default_factory=set)
    rows: int = 0
    model: dict[str, Any] | None = None
    parts: int = 0
    broken: list[str] = field(default_factory=list)


class PartStore:
    """An embed output folder: :meth:`scan` what is there, :meth:`commit` one batch as a new part."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{self.root} exists and is not an output folder (a folder of Parquet parts)")
        self._next = 0

    def scan(self, model: dict[str, Any] | None = None) -> StoreState:
        """Read the paths every complete part holds; clear temporary files of a crashed writer; move
        unreadable parts aside. Raises :class:`ConfigError` when the rows come from another model than
        ``model``."""
        self.root.mkdir(parents=True, exist_ok=True)
        state = StoreState()
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for f in dataset_files(self.root):
            try:
                meta = pq.read_schema(f).metadata or {}
                paths = pq.read_table(f, columns=["path"]).column("path").to_pylist()
            except (OSError, pa.ArrowException) as exc:
                aside = f.with_name(f"_broken.{f.name}")
                f.rename(aside)
                state.broken.append(f"{f.name}: {exc}")
                continue
            written = json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None
            if written and model and not same_model(written, model):
                raise ConfigError(f"{self.root} holds embeddings of another model or budget ({written.get('model')}, "
                                  f"weights {str(written.get('weights_sha256'))[:12]}, front end {written.get('frontend')}); "
                                  "choose another --out")
            state.model = state.model or written
            state.done.update(paths)
            state.rows += len(paths)
            state.parts += 1
            m = PART_RE.match(f.name)
            if m:
                self._next = max(self._next, int(m.group(1)) + 1)
        return state

    def commit(self, table: pa.Table) -> Path:
        """Write ``table`` as the next part, atomically (temporary file, fsync, rename, fsync folder)."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"part-{self._next:06d}.parquet"
        final, tmp = self.root / name, self.root / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.root)
        self._next += 1
        return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
