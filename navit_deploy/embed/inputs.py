"""What ``navit embed INPUT...`` means: folders, globs, text files of paths, or files. Torch-free.

The result is a stable list of absolute paths: inputs in the order given; a folder's images sorted by
relative path (recursively); a glob's matches sorted; a list file's lines in order (relative lines are
relative to the list file, blank lines and ``#`` comments skipped). A path named twice counts once.
Absolute paths make a resumed run match its earlier rows from any working directory.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable

from navit_deploy.data.image_folder import list_images
from navit_deploy.errors import ConfigError

LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = set("*?[")


def read_path_list(path: str | os.PathLike[str]) -> list[str]:
    """The paths a text file lists, one per line."""
    base = Path(path).parent
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(str(base / line) if not os.path.isabs(line) else line)
    return out


def expand_input(item: str) -> list[str]:
    """The files one INPUT stands for (see the module docstring). A named file that does not exist is
    kept: it becomes that input's error row. A folder without images or a glob without matches is a
    :class:`ConfigError` (a typo, most likely)."""
    p = Path(item)
    if p.is_dir():
        found = list_images(p, recursive=True)
        if not found:
            raise ConfigError(f"{item}: no image files in this folder")
        return [str(f) for f in found]
    if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        return read_path_list(p)
    if not p.exists() and _GLOB_CHARS & set(item):
        matches = sorted(m for m in glob.glob(item, recursive=True) if os.path.isfile(m))
        if not matches:
            raise ConfigError(f"{item}: the pattern matches no files")
        return matches
    return [item]


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Every input's files, as absolute paths, in a stable order, each path once."""
    seen: dict[str, None] = {}
    for item in inputs:
        for path in expand_input(item):
            seen.setdefault(os.path.abspath(path), None)
    if not seen:
        raise ConfigError("no inputs: name image files, folders, globs or a .txt list of paths")
    return list(seen)
