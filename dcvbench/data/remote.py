"""Fetch a data set's canonical files over HTTP(S), verified by checksum.

Only ever run when a user asks (``dcvbench data download NAME``); loaders never touch the network.
Each file is streamed to a temporary file in the target directory, its checksum checked, and only
then renamed into place (atomic on one file system): an interrupted or corrupt download never leaves
a file under the real name. Mirrors are tried in order; a file already present with the right
checksum is skipped.

Checksums: MD5 of the gzipped IDX files (as published by their maintainers); for Omniglot's
``chardata.mat`` no published digest exists, so we check the git blob id of the file in the IWAE
repository (SHA-1 of ``b"blob <size>\\0" + content``, what ``git hash-object`` prints).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dcvbench import __version__
from dcvbench.data.datasets import dataset_info, default_data_dir
from dcvbench.data.errors import DataError
from dcvbench.data.mnist import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from dcvbench.data.omniglot import CHARDATA

ALGORITHMS = ("md5", "git-sha1")
URL_SCHEMES = ("http", "https")
CHUNK = 1 << 20  # 1 MiB per read: progress stays smooth, memory stays flat

# Called as progress(file name, bytes so far, total bytes or None when the server does not say).
Progress = Callable[[str, int, "int | None"], None]


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: its name (in the mirror and on disk) and expected digest."""

    name: str
    algorithm: str  # one of ALGORITHMS
    digest: str  # lowercase hex


@dataclass(frozen=True)
class Source:
    """Where a data set's files come from: base URLs, tried in order, and the files."""

    mirrors: tuple[str, ...]
    files: tuple[RemoteFile, ...]


@dataclass(frozen=True)
class Fetched:
    """The outcome for one file: its path, and the URL it came from (``None``: already present)."""

    path: Path
    url: str | None


# Digests and mirrors from DATA.md. A constant table: tests swap entries with monkeypatch.
SOURCES: dict[str, Source] = {
    "mnist": Source(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        files=(
            RemoteFile(TRAIN_IMAGES, "md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            RemoteFile(TRAIN_LABELS, "md5", "d53e105ee54ea40749a09fcbcd1e9432"),
            RemoteFile(TEST_IMAGES, "md5", "9fb629c4189551a2d022fa330f9573f3"),
            RemoteFile(TEST_LABELS, "md5", "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
    ),
    "fashion-mnist": Source(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=(
            RemoteFile(TRAIN_IMAGES, "md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            RemoteFile(TRAIN_LABELS, "md5", "25c81989df183df01b3e8a0aad5dffbe"),
            RemoteFile(TEST_IMAGES, "md5", "bef4ecab320f06d8554ea6380940ec79"),
            RemoteFile(TEST_LABELS, "md5", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
    ),
    "omniglot": Source(
        mirrors=(
            "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/",
            "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/",
        ),
        files=(RemoteFile(CHARDATA, "git-sha1", "016a3536ffe5e1d38e42563a18d7a78bfaf643ec"),),
    ),
}


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of the file at ``path``: ``md5``, or ``git-sha1`` (the git blob id)."""
    if algorithm == "md5":
        h = hashlib.md5(usedforsecurity=False)
    elif algorithm == "git-sha1":
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\0" % path.stat().st_size)
    else:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}; choose from: {', '.join(ALGORITHMS)}")
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fetch_to(url: str, dest: Path, name: str, progress: Progress | None, timeout: float) -> None:
    """Stream ``url`` into ``dest``, a new file (an existing one is refused), reporting progress."""
    request = urllib.request.Request(url, headers={"User-Agent": f"dcvbench/{__version__}"})
    # "xb", not mkstemp: a file created by open() gets the user's umask (mkstemp's are always 0600).
    with urllib.request.urlopen(request, timeout=timeout) as response, dest.open("xb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        while chunk := response.read(CHUNK):
            out.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(name, done, total)


def fetch_file(remote: RemoteFile, mirrors: tuple[str, ...], data_dir: Path, progress, timeout) -> Fetched:
    """Fetch one file from the first mirror that serves it with the right checksum."""
    dest = data_dir / remote.name
    if dest.is_file() and file_digest(dest, remote.algorithm) == remote.digest:
        return Fetched(dest, None)
    failures = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + remote.name
        # Same directory as the target, so the final rename stays on one file system (atomic); a
        # random name, so that two downloads into one directory never write the same file.
        tmp = data_dir / f".{remote.name}.{secrets.token_hex(4)}.part"
        try:
            fetch_to(url, tmp, remote.name, progress, timeout)
            got = file_digest(tmp, remote.algorithm)
            if got != remote.digest:
                failures.append(f"{url}: {remote.algorithm} {got}, expected {remote.digest}")
                continue
            os.replace(tmp, dest)
            return Fetched(dest, url)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            # URLError and timeouts are OSErrors too; HTTPError reads well through str().
            failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not fetch {dest}: " + "; ".join(failures))


def download(
    name: str,
    data_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    progress: Progress | None = None,
    *,
    timeout: float = 60.0,
) -> list[Fetched]:
    """Download data set ``name``'s files into ``data_dir`` (default :func:`default_data_dir`).

    Args:
        name: a registry name. Embedded data sets (``mnist-subset``) need no download: the result
            is then empty.
        data_dir: target directory, created if needed; pass the same one to ``load_dataset``.
        base_url: a single mirror to use instead of the defaults (a local server in tests).
        progress: called as ``progress(file_name, bytes_so_far, total_or_None)`` while streaming.
        timeout: seconds without an answer before a mirror counts as failed.

    Returns:
        One :class:`Fetched` per file, in order; ``url is None`` for files already present.

    Raises:
        DataError: unknown name, a ``base_url`` that is no HTTP(S) URL (refused before anything
            is created or fetched), or a file no mirror served with the right checksum (nothing is
            left under the file's name then).
    """
    info = dataset_info(name)
    if info.embedded:
        return []
    source = SOURCES[name]
    if base_url is not None:
        _check_base_url(base_url)
    mirrors = (base_url,) if base_url is not None else source.mirrors
    directory = default_data_dir(name) if data_dir is None else Path(data_dir).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create {directory}: {exc.strerror or exc}; choose another --data-dir"
        ) from None
    return [fetch_file(remote, mirrors, directory, progress, timeout) for remote in source.files]


def _check_base_url(base_url: str) -> None:
    """Refuse a mirror that is not an ``http(s)://host/...`` URL, before any directory or request."""
    try:
        parts = urllib.parse.urlsplit(base_url)
        web = parts.scheme in URL_SCHEMES and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a malformed host (an unclosed IPv6 bracket) or port (not in 0–65535)
        web = False
    if not web or any(char.isspace() for char in base_url):
        raise DataError(
            f"--base-url {base_url!r} is not an http:// or https:// URL, such as https://example.org/mnist/"
        )
