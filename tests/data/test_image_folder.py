"""ImageFolderDataset / list_images: class trees, flat folders, order, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from navit_deploy.data.image_folder import ImageFolderDataset, list_images
from navit_deploy.errors import ConfigError


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (value, value, value)).save(path)
    return path


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    _png(root / "dog" / "x.jpeg")  # a PNG named .jpeg: nothing is decoded here
    _png(root / "cat" / "b.png")
    _png(root / "cat" / "a.PNG")  # extensions match case-insensitively
    _png(root / "cat" / "sub" / "c.png")  # nested files belong to the class
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "broken.png").write_bytes(b"not really a png")  # listed: decoding is the front end's job
    _png(root / "cat" / ".hidden.png")
    _png(root / ".thumbnails" / "t.png")  # hidden folder: not a class
    (root / "empty").mkdir()  # a class without images still gets its id
    _png(root / "loose.png")  # ignored in a class tree
    return root


def test_class_tree(tree: Path) -> None:
    ds = ImageFolderDataset(tree)
    assert ds.classes == ("cat", "dog", "empty") and ds.class_to_idx == {"cat": 0, "dog": 1, "empty": 2}
    assert ds.is_labeled and len(ds) == 5
    rel = [(p.relative_to(tree).as_posix(), label) for p, label in (ds[i] for i in range(len(ds)))]
    assert rel == [("cat/a.PNG", 0), ("cat/b.png", 0), ("cat/broken.png", 0), ("cat/sub/c.png", 0), ("dog/x.jpeg", 1)]
    assert ds.targets == [0, 0, 0, 0, 1]
    assert ds[-1] == ds[4] and isinstance(ds[0][0], Path)
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(IndexError):
        ds[-6]
    assert [s for s in ImageFolderDataset(str(tree)).samples] == ds.samples  # str root, same deterministic order


def test_extensions_filter(tree: Path) -> None:
    ds = ImageFolderDataset(tree, extensions=("jpeg",))
    assert [p.name for p, _ in ds.samples] == ["x.jpeg"] and ds.classes == ("cat", "dog", "empty")
    with pytest.raises(ConfigError):
        ImageFolderDataset(tree, extensions=())


def test_flat_folder(tmp_path: Path) -> None:
    for name in ("img10.png", "img2.png", "IMG1.JPG"):
        _png(tmp_path / name)
    (tmp_path / "readme.md").write_text("x")
    (tmp_path / "no_images_here").mkdir()
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == () and not ds.is_labeled
    assert [(p.name, label) for p, label in ds.samples] == [("IMG1.JPG", -1), ("img10.png", -1), ("img2.png", -1)]
    assert list_images(tmp_path) == [p for p, _ in ds.samples]


def test_list_images(tree: Path) -> None:
    assert [p.name for p in list_images(tree)] == ["loose.png"]
    rel = [p.relative_to(tree).as_posix() for p in list_images(tree, recursive=True)]
    assert rel == ["cat/a.PNG", "cat/b.png", "cat/broken.png", "cat/sub/c.png", "dog/x.jpeg", "loose.png"]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(ConfigError, match="does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(ConfigError, match="not a directory"):
        ImageFolderDataset(_png(tmp_path / "file.png"))
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b" / "notes.txt").parent.mkdir()
    (empty / "b" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="no images"):
        ImageFolderDataset(empty)
