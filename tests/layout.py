"""The installed layout of the import root, as pyproject's ``package-dir`` maps it.

Tools that walk a package's folder (mypy, import-linter) see only ``oncofed/``
in the checkout; these helpers give them the tree an installation has.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, Path]:
    """Each mapped package (``oncofed.node`` ...) and the checkout folder holding it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items()}


def installed_tree(target: Path, *, copy: bool = False) -> Path:
    """``target/oncofed`` laid out as installed, by symlinks (or copies, for tools that
    do not follow links); returns ``target``."""
    for name, folder in sorted(package_dirs().items()):
        place = target.joinpath(*name.split("."))
        if copy:
            shutil.copytree(folder, place, ignore=shutil.ignore_patterns("__pycache__"))
            continue
        if name == "oncofed":
            place.mkdir(parents=True)
            for entry in folder.iterdir():
                if entry.name != "__pycache__":
                    (place / entry.name).symlink_to(entry)
        else:
            place.symlink_to(folder)
    return target


__all__ = ["ROOT", "installed_tree", "package_dirs"]
