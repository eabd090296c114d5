"""Users' own images: an ImageNet-style ``root/<class>/<files>`` tree or a flat folder. Torch-free.

Only paths are stored; decoding (with typed errors for broken files) is the front end's job.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable
from pathlib import Path

from navit_deploy.errors import ConfigError

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)


def _normalize_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not exts:
        raise ConfigError("extensions must name at least one file extension, e.g. ('.jpg', '.png')")
    return exts


def _check_root(root: str | os.PathLike[str]) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise ConfigError(f"image folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ConfigError(f"image folder {str(path)!r} is not a directory")
    return path


def _is_image(path: Path, exts: tuple[str, ...]) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in exts and path.is_file()


def list_images(
    root: str | os.PathLike[str], extensions: Iterable[str] = IMAGE_EXTENSIONS, recursive: bool = False
) -> list[Path]:
    """Image files in ``root`` (in its subfolders too if ``recursive``), sorted by relative path.

    Files are matched by extension, case-insensitively; hidden files and folders (".name") are
    skipped. Raises :class:`~navit_deploy.errors.ConfigError` if ``root`` is not a directory.
    """
    base, exts = _check_root(root), _normalize_extensions(extensions)
    if not recursive:
        return sorted((p for p in base.iterdir() if _is_image(p, exts)), key=lambda p: p.name)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(p for p in (Path(dirpath) / f for f in filenames) if _is_image(p, exts))
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


class ImageFolderDataset:
    """Lazy list of ``(path, label)`` over an image folder.

    * ImageNet style, ``root/<class>/**/<image>``: the classes are the non-hidden subfolders, sorted
      by name (a subfolder without images still counts, so label ids match between splits); files
      directly in ``root`` are then ignored.
    * Flat, ``root/<image>`` and no subfolder holding images: every label is -1 and
      ``classes == ()`` (calibration and inference sets).

    The order is deterministic: by class, then by path relative to the class folder.
    """

    def __init__(self, root: str | os.PathLike[str], extensions: Iterable[str] = IMAGE_EXTENSIONS) -> None:
        self.root = _check_root(root)
        self.extensions = _normalize_extensions(extensions)
        subdirs = sorted(
            (p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
        )
        per_class = [list_images(d, self.extensions, recursive=True) for d in subdirs]
        if any(per_class):
            self.classes: tuple[str, ...] = tuple(d.name for d in subdirs)
            self.samples: list[tuple[Path, int]] = [(p, k) for k, files in enumerate(per_class) for p in files]
        else:
            self.classes = ()
            self.samples = [(p, -1) for p in list_images(self.root, self.extensions)]
        if not self.samples:
            raise ConfigError(
                f"no images with extensions {', '.join(self.extensions)} in {str(self.root)!r} "
                "(expected root/<class>/<image> or root/<image>)"
            )
        self.class_to_idx: dict[str, int] = {c: k for k, c in enumerate(self.classes)}

    @property
    def is_labeled(self) -> bool:
        """True for an ImageNet-style tree, False for a flat folder (labels -1)."""
        return bool(self.classes)

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Path, int]:
        i = operator.index(i)
        if not -len(self.samples) <= i < len(self.samples):
            raise IndexError(f"index {i} out of range for {len(self.samples)} images in {str(self.root)!r}")
        return self.samples[i]

    def __repr__(self) -> str:
        return f"ImageFolderDataset(root={str(self.root)!r}, images={len(self)}, classes={len(self.classes)})"
