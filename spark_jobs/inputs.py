"""What counts as an uploaded image, which label it carries, and where the files are listed.

Standard library only at import: the Airflow side (counting uploads) imports this module at DAG
parse time, and the featurize job lists with it on the driver (its Python workers read the
listed files with `reading`). One listing and one classification serve both, so `images found
== featurized + errors` compares the same files by construction.

Files are never reached through URIs or globs: a name is taken exactly as the file system (or
S3) gives it, so `#`, `?`, `%20`, `:`, `*`, newlines or emoji in a name are just characters.
Symbolic links are never followed: each one is an error row. pyarrow is imported lazily, for S3
roots only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
S3_SCHEMES = ("s3://", "s3a://")

SYMLINK = "symbolic link, not followed"
NOT_UTF8 = (
    "name is not valid UTF-8 (its undecodable bytes are shown as \\xNN): rename it to have it "
    "featurized"
)
NOT_REGULAR = "not a regular file"


class NoLabelFolder(ValueError):
    """An image that is not inside a `<Label>/` folder below the input root."""


def is_hidden_name(name: str) -> bool:
    """Hadoop's hidden-file rule, applied to every file and folder name below the input root.

    Spark skips these silently, so we call them ignored everywhere, on purpose and documented.
    Like Spark (`HadoopFSUtils.shouldFilterOutPathName`), names starting with `_metadata` or
    `_common_metadata` (Parquet's summary files) are listed, not hidden.
    """
    if name.startswith(("_metadata", "_common_metadata")):
        return False
    return (
        name.startswith(".")
        or (name.startswith("_") and "=" not in name)
        or name.endswith("._COPYING_")
    )


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_image_relpath(relpath: str) -> bool:
    """True for an image the pipeline must account for: `relpath` is relative to the input root."""
    parts = [p for p in relpath.split("/") if p]
    if not parts or any(is_hidden_name(p) for p in parts):
        return False
    return is_image_name(parts[-1])


def readable(name: str) -> str:
    """A name as people can read it: bytes that are not UTF-8 (kept by surrogateescape) as \\xNN.

    Always valid UTF-8, so it can be written to Parquet; the identity for any decodable name.
    """
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system name decodes to
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _decodable(name: str) -> bool:
    return readable(name) == name


@dataclass(frozen=True)
class InputRoot:
    """The --input root: a local folder (a plain path or a `file:` URI) or an S3 prefix.

    `uri` is how paths are shown: `file:` + the absolute path exactly as on disk, or the S3 URI
    as given (`s3://` or `s3a://`), without a trailing slash. Nothing is percent-decoded: a `%`
    in a name is a `%`.
    """

    uri: str
    local: str | None = None  # absolute local path (surrogateescape str), for local roots
    s3: str | None = None  # "bucket/prefix" as pyarrow.fs names it, for S3 roots

    @classmethod
    def parse(cls, root: str) -> InputRoot:
        if root.startswith(S3_SCHEMES):
            scheme, _, rest = root.partition("://")
            rest = rest.rstrip("/")
            if not rest:
                raise ValueError(f"--input {root}: no bucket")
            return cls(f"{scheme}://{rest}", s3=rest)
        if "://" in root and not root.startswith("file://"):
            raise ValueError(f"--input {root}: only local folders, file:, s3:// and s3a:// URIs")
        path = root
        if root.startswith("file://"):
            authority, slash, path = root[len("file://") :].partition("/")
            if authority not in ("", "localhost"):
                raise ValueError(f"--input {root}: a file: URI names no other host")
            path = slash + path
        elif root.startswith("file:"):
            path = root[len("file:") :]
        path = os.path.abspath(path)  # also drops a trailing slash
        return cls("file:" + readable(path).rstrip("/"), local=path)

    def show(self, relpath: str) -> str:
        """The display path of a file below the root (relpath as listed, '/' separators)."""
        return f"{self.uri}/{relpath}"


@dataclass(frozen=True)
class InputFile:
    """One listed file the pipeline accounts for: an image to read, or an error row at once.

    `relpath` is the name below the root exactly as listed (what a worker opens); `path` and
    `label` are what the outputs show; `error` is the reason when it is not read at all.
    """

    path: str
    relpath: str
    label: str | None
    error: str | None = None


def no_label_folder(root: str) -> str:
    return (
        f"no label folder: the image lies directly in the input root {root}, "
        "not in a <Label>/ folder"
    )


def classify(
    root: InputRoot, relpath: str, kind: str = "file", detail: str | None = None
) -> InputFile | None:
    """The one decision about a listed entry: None when ignored, else an InputFile.

    `kind` is "file" (a regular file), "symlink", "other" (fifo, socket, device), or
    "unlistable" (a folder that cannot be listed; `detail` gives why). Ignored: anything below
    a hidden name, and files other than .jpg/.jpeg/.png. Errors: every symbolic link and
    unlistable folder, whatever its name; images under an undecodable name or outside any
    label folder; special files named like images.
    """
    parts = [p for p in relpath.split("/") if p]
    if not parts or any(is_hidden_name(p) for p in parts):
        return None
    label = readable(parts[-2]) if len(parts) > 1 else None
    shown = InputFile(root.show(readable(relpath)), relpath, label)
    if kind == "symlink":
        return _failed(shown, SYMLINK)
    if kind == "unlistable":
        return _failed(shown, f"cannot list folder: {detail}")
    if not is_image_name(parts[-1]):
        return None
    if kind != "file":
        return _failed(shown, f"{NOT_REGULAR} ({kind})")
    if not _decodable(parts[-1]):
        return _failed(shown, "file " + NOT_UTF8)
    if not all(_decodable(p) for p in parts):
        return _failed(shown, "folder " + NOT_UTF8)
    if len(parts) == 1:
        return _failed(shown, no_label_folder(root.uri))
    return shown


def _failed(entry: InputFile, reason: str) -> InputFile:
    return InputFile(entry.path, entry.relpath, entry.label, reason)


def list_inputs(root: str | InputRoot, s3_options: Mapping[str, object] | None = None):
    """Every file below `root` the pipeline accounts for, classified, sorted by path.

    Raises FileNotFoundError when the root does not exist. `s3_options` are keyword arguments
    of `pyarrow.fs.S3FileSystem` (endpoint, region...) for S3 roots; without them the bucket's
    region and credentials are found the usual AWS way.
    """
    root = root if isinstance(root, InputRoot) else InputRoot.parse(root)
    if root.s3 is not None:
        listed: Iterable[tuple[str, str, str | None]] = _walk_s3(root, s3_options)
    else:
        listed = _walk_local(root.local)
    entries = (classify(root, relpath, kind, detail) for relpath, kind, detail in listed)
    return sorted((e for e in entries if e is not None), key=lambda e: e.relpath)


def _walk_local(root: str) -> Iterator[tuple[str, str, str | None]]:
    """(relpath, kind, detail) of every entry below `root`, never following a symbolic link.

    Names are bytes decoded with surrogateescape, so an undecodable name is listed too. Hidden
    folders are not entered.
    """
    if not os.path.isdir(root):  # the root itself may be a link (a lake on another disk)
        raise FileNotFoundError(f"--input {root}: no such folder")
    folders = [(os.fsencode(root), "")]
    while folders:
        folder, prefix = folders.pop()
        try:
            with os.scandir(folder) as scan:
                found = list(scan)
        except OSError as exc:
            if not prefix:
                raise
            yield prefix.rstrip("/"), "unlistable", exc.strerror or str(exc)
            continue
        for entry in found:
            name = entry.name.decode("utf-8", "surrogateescape")
            relpath = prefix + name
            if is_hidden_name(name):
                continue
            if entry.is_symlink():
                yield relpath, "symlink", None
            elif entry.is_dir(follow_symlinks=False):
                folders.append((entry.path, relpath + "/"))
            elif entry.is_file(follow_symlinks=False):
                yield relpath, "file", None
            else:
                yield relpath, _special_kind(entry), None


def _special_kind(entry: os.DirEntry) -> str:
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return "other"
    for test, kind in ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device")):  # fmt: skip
        if test(mode):
            return kind
    return "other"


def _walk_s3(root: InputRoot, options) -> Iterator[tuple[str, str, str | None]]:
    import pyarrow.fs as pafs

    fs = s3_filesystem(root.uri, frozen_options(options))
    if fs.get_file_info(root.s3).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"--input {root.uri}: no such folder")
    selector = pafs.FileSelector(root.s3, recursive=True)
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            yield info.path[len(root.s3) + 1 :], "file", None


def classify_keys(root: str | InputRoot, relpaths: Iterable[str]) -> list[InputFile]:
    """The classification of names listed some other way (the S3 keys Airflow lists)."""
    root = root if isinstance(root, InputRoot) else InputRoot.parse(root)
    entries = (classify(root, relpath) for relpath in relpaths)
    return sorted((e for e in entries if e is not None), key=lambda e: e.relpath)


def frozen_options(options: Mapping[str, object] | None) -> tuple:
    """S3 options as a hashable key of `s3_filesystem`'s cache."""
    return tuple(sorted((options or {}).items()))


@lru_cache(maxsize=8)
def s3_filesystem(uri: str, options: tuple = ()):
    """One pyarrow S3 filesystem per process and root (workers read many files through it)."""
    import pyarrow.fs as pafs

    if options:
        return pafs.S3FileSystem(**dict(options))
    s3_uri = "s3://" + uri.split("://", 1)[1]
    return pafs.FileSystem.from_uri(s3_uri)[0]


def label_for(image: str, root: str) -> str:
    """The label of an image: the name of its parent folder, exactly as listed.

    `image` and `root` are paths or URIs spelled alike (`file:` + path, or `s3://bucket/key`);
    nothing is percent-decoded. An image directly under the root has no label folder.
    """
    image_root, root_root = _store_and_path(image), _store_and_path(root)
    store, path = image_root
    if store != root_root[0] or not path.startswith(root_root[1].rstrip("/") + "/"):
        raise NoLabelFolder(f"{readable(image)} is not below the input root {root}")
    relative = path[len(root_root[1].rstrip("/")) + 1 :].strip("/")
    parts = [p for p in relative.split("/") if p]
    if len(parts) < 2:
        raise NoLabelFolder(no_label_folder(root))
    return parts[-2]


def _store_and_path(location: str) -> tuple[str, str]:
    parsed = InputRoot.parse(location)
    if parsed.s3 is not None:
        bucket, _, key = parsed.s3.partition("/")
        return f"s3://{bucket}", "/" + key
    return "file", parsed.local or ""
