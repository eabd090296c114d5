"""INPUT... into paths: folders, globs, list files, plain files; stable order, each path once."""

import os

import pytest

from navit_deploy.embed.inputs import expand_inputs
from navit_deploy.errors import ConfigError


def test_folders_globs_lists_and_files_in_a_stable_order(tmp_path):
    for rel in ["a/2.png", "a/1.jpg", "a/sub/0.png", "a/notes.txt", "b/x.jpg", "b/y.JPG"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "list.txt").write_text("# a comment\nb/y.JPG\n\n" + str(tmp_path / "a/1.jpg") + "\nmissing.png\n")
    got = expand_inputs([str(tmp_path / "a"), str(tmp_path / "b" / "*.jpg"), str(tmp_path / "list.txt"),
                         str(tmp_path / "a" / "2.png")])
    rel = [os.path.relpath(p, tmp_path) for p in got]
    # folder (sorted, recursive, images only), then the glob, then the list (already-seen paths once)
    assert rel == ["a/1.jpg", "a/2.png", "a/sub/0.png", "b/x.jpg", "b/y.JPG", "missing.png"]
    assert all(os.path.isabs(p) for p in got)


def test_a_missing_file_is_kept_as_an_input(tmp_path):
    assert expand_inputs([str(tmp_path / "nope.jpg")]) == [str(tmp_path / "nope.jpg")]


@pytest.mark.parametrize("make,match", [(lambda t: (t / "empty").mkdir() or t / "empty", "no image files"),
                                        (lambda t: t / "*.png", "matches no files")])
def test_empty_folder_or_glob_is_a_usage_error(tmp_path, make, match):
    with pytest.raises(ConfigError, match=match):
        expand_inputs([str(make(tmp_path))])
