"""download_hotdog against a loopback HTTP server serving zips the tests build."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from hotdog.data import download_hotdog, validate_dataset
from hotdog.errors import DownloadError
from hotdog.paths import data_root


def build_zip(top: str | None = "hotdog", per_class=2) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for split in ("train", "test"):
            for cls, color in (("hotdog", (200, 50, 40)), ("not-hotdog", (40, 90, 200))):
                for i in range(per_class):
                    img = io.BytesIO()
                    Image.new("RGB", (8, 6), color).save(img, "PNG")
                    prefix = f"{top}/" if top else ""
                    zf.writestr(f"{prefix}{split}/{cls}/{i}.png", img.getvalue())
    return buf.getvalue()


class Server:
    """Threaded loopback server: path -> (status, body, declared length or None)."""

    def __init__(self):
        self.routes: dict[str, tuple[int, bytes, int | None]] = {}
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                status, body, declared = outer.routes.get(self.path, (404, b"<html>not found</html>", None))
                self.send_response(status)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(declared if declared is not None else len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def leftovers(home: Path) -> list[str]:
    root = data_root(home)
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if p.name != ".hotdog.lock" and p.name != "hotdog")


@pytest.mark.parametrize("top", ["hotdog", None])
def test_download_success_and_no_second_download(server, tmp_path, top):
    body = build_zip(top)
    sha1 = hashlib.sha1(body).hexdigest()
    server.routes["/hotdog.zip"] = (200, body, None)
    seen: list[tuple[int, int | None]] = []
    home = tmp_path / "home"
    path = download_hotdog(home=home, url=server.url("/hotdog.zip"), sha1=sha1,
                           progress=lambda d, t: seen.append((d, t)), timeout=5)
    assert path == data_root(home) / "hotdog"
    assert (path / "train").is_dir() and (path / "test").is_dir()
    report = validate_dataset(path)
    assert report.counts == {"train": {"hotdog": 2, "not-hotdog": 2}, "test": {"hotdog": 2, "not-hotdog": 2}}
    assert seen[-1] == (len(body), len(body))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert leftovers(home) == []
    again = download_hotdog(home=home, url=server.url("/hotdog.zip"), sha1=sha1, timeout=5)
    assert again == path and server.hits["/hotdog.zip"] == 1


def test_home_from_environment(server, hotdog_home):
    body = build_zip()
    server.routes["/z"] = (200, body, None)
    path = download_hotdog(url=server.url("/z"), sha1=hashlib.sha1(body).hexdigest(), timeout=5)
    assert path == hotdog_home / "data" / "hotdog"


def test_wrong_sha1_is_refused_and_nothing_kept(server, tmp_path):
    body = build_zip()
    server.routes["/hotdog.zip"] = (200, body, None)
    home = tmp_path / "home"
    with pytest.raises(DownloadError, match="SHA-1"):
        download_hotdog(home=home, url=server.url("/hotdog.zip"), sha1="0" * 40, timeout=5)
    assert not (data_root(home) / "hotdog").exists()
    assert leftovers(home) == []


def test_http_404_never_saved(server, tmp_path):
    home = tmp_path / "home"
    with pytest.raises(DownloadError, match="404"):
        download_hotdog(home=home, url=server.url("/nope.zip"), timeout=5)
    assert not (data_root(home) / "hotdog").exists()
    assert leftovers(home) == []


def test_truncated_body(server, tmp_path):
    body = build_zip()
    server.routes["/short.zip"] = (200, body[:-100], len(body))
    home = tmp_path / "home"
    with pytest.raises(DownloadError, match="truncated"):
        download_hotdog(home=home, url=server.url("/short.zip"), sha1=hashlib.sha1(body).hexdigest(), timeout=5)
    assert not (data_root(home) / "hotdog").exists()
    assert leftovers(home) == []


def test_zip_without_train_and_test(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hello")
    body = buf.getvalue()
    server.routes["/odd.zip"] = (200, body, None)
    with pytest.raises(DownloadError, match="train"):
        download_hotdog(home=tmp_path / "h", url=server.url("/odd.zip"), sha1=hashlib.sha1(body).hexdigest(), timeout=5)
    assert leftovers(tmp_path / "h") == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_offline_message(msg: str) -> None:
    assert "offline" in msg
    assert "python -m hotdog data --root DIR" in msg
    assert "zip" in msg
    assert msg.count(". ") == 0 and "\n" not in msg, f"one sentence please: {msg!r}"


def test_connection_refused_says_offline(tmp_path):
    with pytest.raises(DownloadError) as ei:
        download_hotdog(home=tmp_path / "h", url=f"http://127.0.0.1:{free_port()}/hotdog.zip", timeout=5)
    assert_offline_message(str(ei.value))
    assert leftovers(tmp_path / "h") == []


def test_dns_failure_says_offline(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(DownloadError) as ei:
        download_hotdog(home=tmp_path / "h", timeout=5)
    assert_offline_message(str(ei.value))
    assert "d2l-data.s3-accelerate.amazonaws.com" in str(ei.value)


def test_failed_update_keeps_previous_copy(server, tmp_path):
    body = build_zip()
    server.routes["/hotdog.zip"] = (200, body, None)
    home = tmp_path / "home"
    path = download_hotdog(home=home, url=server.url("/hotdog.zip"), sha1=hashlib.sha1(body).hexdigest(), timeout=5)
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    # A different expected checksum forces a new download, which then fails.
    with pytest.raises(DownloadError):
        download_hotdog(home=home, url=server.url("/gone.zip"), sha1="1" * 40, timeout=5)
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    assert validate_dataset(path).total == 8


def test_cli_download_json(server, tmp_path, capsys):
    import argparse
    import json

    from hotdog.commands import data as cmd

    body = build_zip()
    server.routes["/hotdog.zip"] = (200, body, None)
    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(["download", "--home", str(tmp_path / "h"), "--url", server.url("/hotdog.zip"),
                              "--sha1", hashlib.sha1(body).hexdigest(), "--json"])
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["path"] == str(data_root(tmp_path / "h") / "hotdog")
    assert doc["counts"] == {"train": {"hotdog": 2, "not-hotdog": 2}, "test": {"hotdog": 2, "not-hotdog": 2}}
    args = parser.parse_args(["download", "--home", str(tmp_path / "h"), "--url", server.url("/hotdog.zip"),
                              "--sha1", hashlib.sha1(body).hexdigest()])
    assert args.func(args) == 0
    assert "ready" in capsys.readouterr().out and server.hits["/hotdog.zip"] == 1


def test_leftovers_of_a_killed_download_are_cleaned(server, tmp_path):
    body = build_zip()
    server.routes["/hotdog.zip"] = (200, body, None)
    home = tmp_path / "home"
    droot = data_root(home)
    (droot / ".extract-dead" / "hotdog" / "train").mkdir(parents=True)
    (droot / ".download-dead.zip").write_bytes(body[:100])
    download_hotdog(home=home, url=server.url("/hotdog.zip"), sha1=hashlib.sha1(body).hexdigest(), timeout=5)
    assert leftovers(home) == []
