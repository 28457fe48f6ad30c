"""Downloads against a local HTTP server on 127.0.0.1; the real network is never touched."""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import threading
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from dcvbench.data import DataError, RemoteFile, Source, download, file_digest, load_dataset, remote

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves a directory, records the paths asked for, prints nothing."""

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, format, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """``(root, base_url, requests)``: files put under ``root`` are served at ``base_url``."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_port}/", httpd.requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Refuse any URL but the local server's, and point every default mirror nowhere."""
    real_urlopen = urllib.request.urlopen

    def local_only(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        assert url.startswith("http://127.0.0.1:"), f"test tried to reach {url}"
        return real_urlopen(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)
    nowhere = {
        name: Source(("http://127.0.0.1:9/",), source.files) for name, source in remote.SOURCES.items()
    }
    monkeypatch.setattr(remote, "SOURCES", nowhere)


@pytest.fixture
def served_mnist(server, make_idx_dir, monkeypatch):
    """Tiny IDX files served by the local server, with their MD5s as the expected checksums."""
    root, base_url, requests = server
    make_idx_dir(directory=root, n_train=12, n_test=5)
    files = tuple(
        RemoteFile(stem + ".gz", "md5", hashlib.md5((root / (stem + ".gz")).read_bytes()).hexdigest())
        for stem in IDX_STEMS
    )
    monkeypatch.setitem(remote.SOURCES, "mnist", Source((base_url,), files))
    return root, base_url, requests


def test_download_then_load(served_mnist, tmp_path):
    root, base_url, _ = served_mnist
    target = tmp_path / "data" / "mnist"
    seen = {}
    fetched = download("mnist", target, progress=lambda name, done, total: seen.update({name: (done, total)}))
    assert [f.path for f in fetched] == [target / (stem + ".gz") for stem in IDX_STEMS]
    assert all(f.url == base_url + f.path.name for f in fetched)
    for f in fetched:
        assert f.path.read_bytes() == (root / f.path.name).read_bytes()
        size = f.path.stat().st_size
        assert seen[f.path.name] == (size, size)
    assert sorted(p.name for p in target.iterdir()) == sorted(stem + ".gz" for stem in IDX_STEMS)
    assert load_dataset("mnist", target, valid_size=2).sizes == {"train": 10, "valid": 2, "test": 5}


def test_base_url_overrides_the_mirrors(served_mnist, tmp_path, monkeypatch):
    _, base_url, _ = served_mnist
    source = remote.SOURCES["mnist"]
    monkeypatch.setitem(remote.SOURCES, "mnist", Source(("http://127.0.0.1:9/",), source.files))
    assert all(f.url.startswith(base_url) for f in download("mnist", tmp_path / "d", base_url=base_url))


def test_mirrors_are_tried_in_order(served_mnist, tmp_path, monkeypatch):
    _, base_url, requests = served_mnist
    source = remote.SOURCES["mnist"]
    mirrors = (base_url + "gone/", base_url)  # the first answers 404 for everything
    monkeypatch.setitem(remote.SOURCES, "mnist", Source(mirrors, source.files))
    fetched = download("mnist", tmp_path / "d")
    assert all(f.url == base_url + f.path.name for f in fetched)
    assert requests[:2] == ["/gone/train-images-idx3-ubyte.gz", "/train-images-idx3-ubyte.gz"]


def test_checksum_mismatch_leaves_nothing_behind(served_mnist, tmp_path, monkeypatch):
    source = remote.SOURCES["mnist"]
    bad = (RemoteFile(source.files[0].name, "md5", "0" * 32), *source.files[1:])
    monkeypatch.setitem(remote.SOURCES, "mnist", Source(source.mirrors, bad))
    target = tmp_path / "d"
    with pytest.raises(DataError) as info:
        download("mnist", target)
    message = str(info.value)
    assert str(target / "train-images-idx3-ubyte.gz") in message
    assert f"expected {'0' * 32}" in message and "\n" not in message
    assert list(target.iterdir()) == []  # neither the file nor its temporary


@pytest.fixture
def umask_027():
    """A umask other than the usual 022 (and restored after), so that honouring it shows."""
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_downloaded_files_respect_the_umask(served_mnist, tmp_path, umask_027):
    for fetched in download("mnist", tmp_path / "d"):
        assert stat.S_IMODE(fetched.path.stat().st_mode) == 0o640  # 0o666 & ~0o027; not mkstemp's 0o600


@pytest.mark.parametrize(
    "base_url",
    [
        "notaurl",
        "ftp://example.org/",
        "file:///tmp/",
        "http://",
        "https://[::1/",
        "https:// x/",
        "http://h:99999/",
    ],
)
def test_a_base_url_that_is_not_an_http_url_is_refused_before_anything(served_mnist, tmp_path, base_url):
    _, _, requests = served_mnist
    target = tmp_path / "d"
    with pytest.raises(DataError) as info:
        download("mnist", target, base_url=base_url)
    assert str(info.value) == (
        f"--base-url {base_url!r} is not an http:// or https:// URL, such as https://example.org/mnist/"
    )
    assert not target.exists() and requests == []


def test_unreachable_mirror(served_mnist, tmp_path):
    with pytest.raises(DataError, match=r"could not fetch .*127\.0\.0\.1:9"):
        download("mnist", tmp_path / "d", base_url="http://127.0.0.1:9/")
    assert list((tmp_path / "d").iterdir()) == []


def test_files_present_with_the_right_checksum_are_skipped(served_mnist, tmp_path):
    _, _, requests = served_mnist
    target = tmp_path / "d"
    download("mnist", target)
    count = len(requests)
    again = download("mnist", target, base_url="http://127.0.0.1:9/")  # unreachable: must not be needed
    assert [f.url for f in again] == [None] * 4
    assert len(requests) == count


def test_a_corrupt_present_file_is_fetched_again(served_mnist, tmp_path):
    root, _, _ = served_mnist
    target = tmp_path / "d"
    download("mnist", target)
    broken = target / "t10k-labels-idx1-ubyte.gz"
    broken.write_bytes(b"half a file")
    fetched = download("mnist", target)
    assert [f.url is None for f in fetched] == [True, True, True, False]
    assert broken.read_bytes() == (root / broken.name).read_bytes()


def test_omniglot_is_checked_by_git_blob_id(server, tmp_path, monkeypatch):
    root, base_url, _ = server
    content = np.random.default_rng(0).bytes(5000)
    (root / "chardata.mat").write_bytes(content)
    blob_id = hashlib.sha1(b"blob 5000\0" + content).hexdigest()
    monkeypatch.setitem(
        remote.SOURCES,
        "omniglot",
        Source((base_url,), (RemoteFile("chardata.mat", "git-sha1", blob_id),)),
    )
    (fetched,) = download("omniglot", tmp_path / "o")
    assert fetched.path.read_bytes() == content


def test_file_digest_matches_known_values(tmp_path):
    path = tmp_path / "hello"
    path.write_bytes(b"hello\n")
    assert file_digest(path, "git-sha1") == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object
    assert file_digest(path, "md5") == "b1946ac92492d2347c6235b4d2611184"
    with pytest.raises(ValueError, match="unknown checksum algorithm 'sha3'"):
        file_digest(path, "sha3")


def test_embedded_needs_no_download(tmp_path):
    assert download("mnist-subset", tmp_path / "x") == []
    assert not (tmp_path / "x").exists()


def test_unknown_name(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'cifar'; choose from"):
        download("cifar", tmp_path)


def test_real_sources_cover_every_downloadable_dataset():
    from dcvbench.data import SOURCES  # the package's reference to the real table, never patched here

    assert set(SOURCES) == {"mnist", "fashion-mnist", "omniglot"}
    assert remote.SOURCES.keys() == SOURCES.keys()
