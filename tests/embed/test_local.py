"""``navit embed`` in one process: one row per input in input order, and resuming after a crash writes every
input exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from navit_deploy.cli import main
from navit_deploy.embed.local import embed_files, embed_paths, even_batches, output_metadata
from navit_deploy.embed.store import dataset_files, read_embeddings
from navit_deploy.errors import ConfigError
from navit_deploy.runtime.open import open_runner, pipeline_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference(images, model) -> dict[str, np.ndarray | None]:
    """Every image's embedding from one Pipeline.run (None for the broken files)."""
    runner, artifact = open_runner(model)
    with runner:
        results = pipeline_for(runner, artifact).run([str(p) for p in images])
    return {str(p): r.embedding for p, r in zip(images, results)}


def _check_exactly_once(out: Path, paths: list[str], reference: dict) -> pa.Table:
    table = read_embeddings(out)
    got = table.column("path").to_pylist()
    assert got == paths  # every input once, in input order (parts in order, rows in order within each)
    for row in table.to_pylist():
        ref = reference[row["path"]]
        if ref is None:
            assert row["embedding"] is None and row["error_type"] == "ImageDecodeError"
        else:
            np.testing.assert_allclose(row["embedding"], ref, atol=1e-5)
    return table


@pytest.mark.parametrize("n,size", [(38, 8), (38, 38), (5, 8), (0, 4), (17, 4)])
def test_even_batches_cover_every_index_once(n, size):
    bounds = even_batches(n, size)
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
    assert all(0 < b - a <= size for a, b in bounds) and len(bounds) == -(-n // size)


def test_one_row_per_input_in_input_order(images, model, reference, tmp_path):
    paths = [str(p) for p in images]
    summary = embed_files(paths, model, tmp_path / "e.parquet", batch_size=8, progress=False)
    table = _check_exactly_once(tmp_path / "e.parquet", paths, reference)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 128)
    assert table.schema.field("grid").type == pa.list_(pa.int32(), 2)
    rows = {r["path"]: r for r in table.to_pylist()}
    bad = rows[str(images[0])]  # broken.jpg sorts first
    assert bad["tokens"] is None and bad["grid"] is None and "broken.jpg" in bad["error"]
    good = rows[paths[-1]]
    assert good["error"] is None and good["tokens"] == good["grid"][0] * good["grid"][1]
    assert (summary.inputs, summary.embedded, summary.failed, summary.parts) == (38, 38, 2, 5)


def test_resume_after_a_crash_writes_every_input_exactly_once(images, model, reference, tmp_path):
    paths, out = [str(p) for p in images], tmp_path / "e.parquet"
    commits: list[Path] = []

    class Crash(Exception):
        pass

    def crash_after_two(part: Path) -> None:
        commits.append(part)
        if len(commits) == 2:
            raise Crash

    with pytest.raises(Crash):
        embed_files(paths, model, out, batch_size=8, progress=False, on_commit=crash_after_two)
    (out / ".part-000099.parquet.tmp").write_bytes(b"PAR1 a batch in flight, cut off")
    before = {p.name: p.read_bytes() for p in dataset_files(out)}
    assert len(before) == 2
    summary = embed_files(paths, model, out, batch_size=8, progress=False)
    assert (summary.skipped, summary.embedded) == (16, len(paths) - 16)
    _check_exactly_once(out, paths, reference)
    assert all((out / name).read_bytes() == data for name, data in before.items())  # nothing rewritten
    assert not list(out.glob(".*.tmp"))
    again = embed_files(paths, model, out, batch_size=8, progress=False)
    assert (again.skipped, again.embedded, again.parts) == (len(paths), 0, 0)


def test_a_killed_process_loses_at_most_the_batch_in_flight(images, model, reference, tmp_path):
    paths, out = [str(p) for p in images], tmp_path / "e.parquet"
    cmd = [sys.executable, "-m", "navit_deploy.cli", "embed", *paths, "--onnx", str(model), "--out", str(out),
           "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not dataset_files(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # no event to wait on: the first committed part appears on disk
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL  # killed while it was still embedding
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {p.name: p.read_bytes() for p in dataset_files(out)}
    rows_before = read_embeddings(out).num_rows if before else 0
    assert 0 < rows_before < len(paths)
    summary = embed_files(paths, model, out, batch_size=2, progress=False)
    assert summary.skipped == rows_before and summary.embedded == len(paths) - rows_before
    assert not summary.broken_parts  # parts are renamed into place only once complete
    _check_exactly_once(out, paths, reference)
    assert all((out / name).read_bytes() == data for name, data in before.items())


def test_an_unreadable_part_is_moved_aside_and_embedded_again(images, model, reference, tmp_path):
    paths, out = [str(p) for p in images], tmp_path / "e.parquet"
    embed_files(paths, model, out, batch_size=8, progress=False)
    part = dataset_files(out)[-1]  # the last part, cut off as by a writer that did not write atomically
    part.write_bytes(part.read_bytes()[:100])
    summary = embed_files(paths, model, out, batch_size=8, progress=False)
    assert len(summary.broken_parts) == 1 and (out / f"_broken.{part.name}").exists()
    assert summary.embedded == 7
    _check_exactly_once(out, paths, reference)


def test_resume_refuses_rows_of_another_model(images, model, tmp_path):
    paths, out = [str(p) for p in images[:4]], tmp_path / "e.parquet"
    runner, artifact = open_runner(model)
    with runner:
        pipe = pipeline_for(runner, artifact)
        other = {**output_metadata(model, artifact), "weights_sha256": "0" * 64}
        embed_paths(paths[:2], pipe, out, other, progress=False)
        with pytest.raises(ConfigError, match="another model"):
            embed_paths(paths, pipe, out, output_metadata(model, artifact), progress=False)
        smaller = output_metadata(model, artifact, artifact.frontend.replace(max_patches=16))
        embed_paths(paths[:2], pipe, tmp_path / "budget.parquet", smaller, progress=False)
        with pytest.raises(ConfigError, match="another model or budget"):
            embed_paths(paths, pipe, tmp_path / "budget.parquet", output_metadata(model, artifact), progress=False)


def test_cli_embed_folder_and_resume(images, model, tmp_path, capsys):
    out = tmp_path / "e.parquet"
    args = ["embed", str(images[0].parent), "--onnx", str(model), "--out", str(out), "--no-progress", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert (first["embedded"], first["failed"], second["skipped"], second["embedded"]) == (38, 2, 38, 0)
    assert main(["embed", str(tmp_path / "nothing-*.jpg"), "--onnx", str(model), "--out", str(out)]) == 2


def test_cli_ray_address_that_is_a_path_is_a_usage_error(images, model, tmp_path, capsys):
    folder = str(images[0].parent)
    code = main(["embed", str(images[1]), "--ray", folder, "--onnx", str(model), "--out", str(tmp_path / "e")])
    assert code == 2 and "--ray took" in capsys.readouterr().err
