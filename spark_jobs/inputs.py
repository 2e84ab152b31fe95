"""What counts as an uploaded image, and which label it carries.

Standard library only: the Airflow side (counting uploads, validating counts) imports this module
at DAG parse time, and the Spark jobs use it in every Python worker. Both must agree, or the
validation that `images found == featurized + errors` would compare different things.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# Spark's binaryFile source takes a glob on file names; it is case-sensitive, so spell each case.
IMAGE_NAME_GLOB = "*.{[jJ][pP][gG],[jJ][pP][eE][gG],[pP][nN][gG]}"


class NoLabelFolder(ValueError):
    """An image that is not inside a `<Label>/` folder below the input root."""


def is_hidden_name(name: str) -> bool:
    """Hadoop's hidden-file rule, which Spark's file listing applies to every file and folder.

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


def is_image_relpath(relpath: str) -> bool:
    """True for an image the pipeline must account for: `relpath` is relative to the input root."""
    parts = [p for p in relpath.split("/") if p]
    if not parts or any(is_hidden_name(p) for p in parts):
        return False
    return parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def uri_path(uri: str) -> str:
    """The decoded path part of a URI (`file:/a%20b/c` -> `/a b/c`); a plain path as it is.

    Spark reports file paths as percent-encoded URIs; labels contain spaces and non-ASCII letters.
    """
    parts = urlsplit(uri)
    path = unquote(parts.path) if parts.scheme else uri
    return path.rstrip("/")


def display_path(uri: str) -> str:
    """A URI with its path decoded, in one spelling (`file:///a%20b` -> `file:/a b`).

    What people see in a file browser or the S3 console, and a key that compares the paths
    Spark's scans report with those its file listing reports.
    """
    parts = urlsplit(uri)
    if not parts.scheme:
        return uri
    authority = f"//{parts.netloc}" if parts.netloc else ""
    return f"{parts.scheme}:{authority}{unquote(parts.path)}"


def label_for(image_uri: str, root: str) -> str:
    """The label of an image: the name of its parent folder, decoded exactly.

    `root` is the input root as a URI or path; an image directly under it has no label folder.
    """
    image_path = uri_path(image_uri)
    root_path = uri_path(root)
    image_host, root_host = urlsplit(image_uri).netloc, urlsplit(root).netloc
    if not image_path.startswith(root_path + "/") or (
        image_host and root_host and image_host != root_host
    ):
        raise NoLabelFolder(f"{display_path(image_uri)} is not below the input root {root}")
    relative = image_path[len(root_path) + 1 :]
    if "/" not in relative:
        raise NoLabelFolder(
            f"no label folder: the image lies directly in the input root {root}, "
            "not in a <Label>/ folder"
        )
    return relative.rsplit("/", 2)[-2]
