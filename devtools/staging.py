"""Staging RAW (<Label>/<file> photos) into a lake partition, as `make demo` promises (see
devtools.demo): all or nothing (a hidden staging folder renamed into place once complete),
symbolic links copied as links, a partition already holding exactly RAW's files reused and one
holding anything else refused.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import psutil

from fruits_pipeline.settings import REPO_ROOT

SHARED_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "fruits360-sample"
_STAGING = re.compile(r"\.(?P<partition>.+)\.staging-(?P<pid>\d+)-[0-9a-f]+")


class DemoError(Exception):
    """A refusal or failure `make demo` (and `make refit`) report as one line (no traceback),
    with its exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(" ".join(message.split("\n")))
        self.code = code


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under root by relative path, without following symbolic links: ("dir",),
    ("file", size), ("link", target) or ("special",) (a FIFO, socket or device)."""
    entries: dict[str, tuple] = {}
    pending = [(str(root), "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as scan:
            for entry in scan:
                rel = prefix + entry.name
                if entry.is_symlink():
                    entries[rel] = ("link", os.readlink(entry.path))
                elif entry.is_dir(follow_symlinks=False):
                    entries[rel] = ("dir",)
                    pending.append((entry.path, rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    entries[rel] = ("file", entry.stat(follow_symlinks=False).st_size)
                else:
                    entries[rel] = ("special",)
    return entries


def _copy_file(source: str, target: str) -> None:
    shutil.copyfile(source, target, follow_symlinks=False)


def _copy_tree(source: Path, target: Path, entries: dict[str, tuple]) -> None:
    """Copy the entries (as `tree` lists them) into the new folder target: links as links."""
    target.mkdir()
    for rel, kind in sorted(entries.items()):  # a folder sorts before what it holds
        if kind[0] == "dir":
            (target / rel).mkdir()
        elif kind[0] == "link":
            os.symlink(kind[1], target / rel)
        elif kind[0] == "file":
            _copy_file(str(source / rel), str(target / rel))
        else:
            raise OSError(errno.EINVAL, "neither a file, a folder nor a symbolic link", rel)


def _same_files(source: Path, entries: dict[str, tuple], target: Path) -> bool:
    """True when target holds exactly the entries of source: same paths, sizes and bytes."""
    if tree(target) != entries:
        return False
    return all(
        filecmp.cmp(source / rel, target / rel, shallow=False)
        for rel, kind in entries.items()
        if kind[0] == "file"
    )


def _remove_stale_staging(target: Path) -> None:
    """Staging folders of this partition left by a copy whose process is gone (killed)."""
    for path in target.parent.glob(f".{target.name}.staging-*"):
        match = _STAGING.fullmatch(path.name)
        if match and match["partition"] == target.name and not psutil.pid_exists(
            int(match["pid"])
        ):
            shutil.rmtree(path, ignore_errors=True)


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p; returns the folders it created, outermost first."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


def place(source: Path, target: Path) -> bool:
    """Make target (a partition folder) hold a copy of source; returns True when target already
    held exactly that copy (reused, nothing copied). Raises DemoError, with the lake as it was,
    when target holds anything else or when the copy fails."""
    try:
        entries = tree(source)
    except OSError as err:
        raise DemoError(f"RAW {str(source)!r} cannot be read: {err}") from None
    if os.path.lexists(target):
        if target.is_symlink() or not target.is_dir():
            raise DemoError(f"{target} exists and is not a folder: nothing was changed; "
                            "give another DATE or LAKE")  # fmt: skip
        if any(target.iterdir()):
            if _same_files(source, entries, target):
                _remove_stale_staging(target)
                return True
            raise DemoError(
                f"{target} already holds other files than RAW {str(source)!r}: nothing was "
                "changed; give another DATE or LAKE (or remove that folder yourself)"
            )
        # An empty partition folder: the rename below replaces it.
    created = _make_parents(target.parent)
    _remove_stale_staging(target)
    staging = target.with_name(f".{target.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        _copy_tree(source, staging, entries)
        os.rename(staging, target)  # atomic; replaces an empty folder, never a non-empty one
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise DemoError(
                f"{target} was filled by someone else during the copy: nothing of it was "
                "changed; give another DATE or LAKE"
            ) from None
        if isinstance(exc, OSError):
            raise DemoError(
                f"could not copy RAW {str(source)!r} into {target}: {exc}; the lake is unchanged",
                code=1,
            ) from None
        raise
    return False


def stage_raw(raw: str | None, target: Path) -> str:
    """Fill the partition from RAW (see `place`); returns a description of the images used."""
    reused = " (already in the lake: reused, nothing copied)"
    if raw:
        return f"{raw}{reused if place(Path(raw), target) else ''}"
    if SHARED_SAMPLE.is_dir():
        kept = place(SHARED_SAMPLE, target)
        return f"{SHARED_SAMPLE} (real Fruits-360 photos){reused if kept else ''}"
    from devtools.samples import make_synthetic_fruits

    with tempfile.TemporaryDirectory(prefix="fruits-demo-synthetic-") as tmp:
        counts = make_synthetic_fruits(Path(tmp) / "raw", n_classes=8, per_class=15)
        kept = place(Path(tmp) / "raw", target)
    return (
        f"{sum(counts.values())} synthetic fruit images generated by the project"
        f"{reused if kept else ''}"
    )
