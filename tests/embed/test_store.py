"""The output folder: a part is visible only once complete, and rows read back as written."""

import pytest

import navit_deploy.embed.store as store_mod
from navit_deploy.embed.store import PartStore, dataset_files, read_embeddings
from navit_deploy.embed.table import results_table
from navit_deploy.runtime import ImageResult


def _table(paths):
    return results_table(paths, [ImageResult(i, p, error="x", error_type="ImageDecodeError")
                                 for i, p in enumerate(paths)], dim=4)


def test_a_part_is_visible_only_once_complete(tmp_path, monkeypatch):
    out = tmp_path / "o.parquet"
    store = PartStore(out)
    store.commit(_table(["/a"]))

    def dies_mid_write(table, fh):
        fh.write(b"PAR1 half a part")
        raise KeyboardInterrupt  # the process is gone in the middle of the write

    monkeypatch.setattr(store_mod.pq, "write_table", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        store.commit(_table(["/b"]))
    monkeypatch.undo()
    assert [p.name for p in dataset_files(out)] == ["part-000000.parquet"]
    assert read_embeddings(out).column("path").to_pylist() == ["/a"]
    state = PartStore(out).scan()
    assert state.done == {"/a"} and state.broken == [] and not list(out.glob(".*"))


def test_parts_continue_their_numbering_after_a_scan(tmp_path):
    out = tmp_path / "o.parquet"
    PartStore(out).commit(_table(["/a"]))
    again = PartStore(out)
    again.scan()
    assert again.commit(_table(["/b"])).name == "part-000001.parquet"
    assert read_embeddings(out).column("path").to_pylist() == ["/a", "/b"]
