"""How a Python worker reads a listed file's bytes (`inputs` decides which files those are).

Each name is opened below the input root exactly as listed, never through a URI or a glob, and
no symbolic link is followed, even one that replaced a file after the listing. A file that
cannot be read raises UnreadableFile with the reason its error row shows. Standard library only
at import; pyarrow is imported for S3 roots only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping

from spark_jobs.inputs import NOT_REGULAR, SYMLINK, InputRoot, frozen_options, s3_filesystem

# Spark's binaryFile source refused files from 2 GiB on; here such a file is an error row.
MAX_FILE_BYTES = 2**31 - 1


class UnreadableFile(ValueError):
    """A listed image whose bytes cannot be read; the message is the reason users read."""


def file_reader(
    root: str | InputRoot, s3_options: Mapping[str, object] | None = None
) -> Callable[[str], bytes]:
    """relpath -> the file's bytes, or UnreadableFile with the reason. For Python workers."""
    root = root if isinstance(root, InputRoot) else InputRoot.parse(root)
    if root.s3 is not None:
        options = frozen_options(s3_options)
        return lambda relpath: _read_s3(root, options, relpath)
    return lambda relpath: read_local(root.local, relpath)


_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def read_local(root: str, relpath: str) -> bytes:
    """The bytes of `root/relpath`, opening each name below the root without following links.

    Each folder is opened relative to its parent with O_NOFOLLOW, then the file with O_NOFOLLOW
    and O_NONBLOCK: a name replaced by a link (or a fifo) after the listing is refused, never
    followed, and nothing outside the root is read.
    """
    *folders, name = relpath.split("/")
    try:
        fd = os.open(os.fsencode(root), _DIRECTORY_FLAGS)
        try:
            for folder in folders:
                inner = _open_below(fd, folder, _DIRECTORY_FLAGS | _NOFOLLOW)
                os.close(fd)
                fd = inner
            flags = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0)
            flags |= getattr(os, "O_CLOEXEC", 0)
            file_fd = _open_below(fd, name, flags)
        finally:
            os.close(fd)
        with os.fdopen(file_fd, "rb") as file:
            mode = os.fstat(file.fileno())
            if not stat.S_ISREG(mode.st_mode):
                raise UnreadableFile(NOT_REGULAR)
            if mode.st_size > MAX_FILE_BYTES:
                raise UnreadableFile(_too_large(mode.st_size))
            return file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UnreadableFile(_os_reason(exc)) from exc


def _open_below(folder_fd: int, name: str, flags: int) -> int:
    """os.open of `name` in an open folder; a symbolic link there is refused with its reason."""
    encoded = name.encode("utf-8", "surrogateescape")
    try:
        return os.open(encoded, flags, dir_fd=folder_fd)
    except OSError:
        # O_NOFOLLOW refuses a link with ELOOP, or ENOTDIR when a folder was asked for.
        try:
            is_link = stat.S_ISLNK(
                os.stat(encoded, dir_fd=folder_fd, follow_symlinks=False).st_mode
            )
        except OSError:
            is_link = False
        if is_link:
            raise UnreadableFile(SYMLINK) from None
        raise


def _os_reason(exc: OSError) -> str:
    return f"cannot read file: {exc.strerror or exc}"


def _too_large(size: int) -> str:
    return f"file too large: {size} bytes, the limit is {MAX_FILE_BYTES}"


def _read_s3(root: InputRoot, options: tuple, relpath: str) -> bytes:
    fs = s3_filesystem(root.uri, options)
    try:
        with fs.open_input_file(f"{root.s3}/{relpath}") as file:
            size = file.size()
            if size > MAX_FILE_BYTES:
                raise UnreadableFile(_too_large(size))
            return file.read()
    except (OSError, ValueError) as exc:
        if isinstance(exc, UnreadableFile):
            raise
        raise UnreadableFile(f"cannot read object: {exc}") from exc
