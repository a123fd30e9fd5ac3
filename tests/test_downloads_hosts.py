"""Downloads through the library made for each host, with restorer's own checksum and
atomic install around them: huggingface_hub for Hugging Face, gdown for Google Drive file
links, plain HTTP for the rest. The servers are local (127.0.0.1) and speak each host's
protocol the way its library expects."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from restorer.zoo import download as dl
from restorer.zoo import layout
from restorer.zoo.catalog import FileSpec
from restorer.zoo.layout import StoreError
from tests.store_helpers import HAT_TINY, tiny_hat_entry, use_catalog

DATA = (HAT_TINY / "hat_tiny_x2.safetensors").read_bytes()
SHA = hashlib.sha256(DATA).hexdigest()
COMMIT = "0123456789abcdef0123456789abcdef01234567"
HF_URL = "https://huggingface.co/someone/tiny-hat/resolve/main/weights/tiny-hat.safetensors"
DRIVE_ID = "1Exf8LeYOjGnCLOvrA06P6UocFFmsunpQ"
DRIVE_URL = f"https://drive.google.com/file/d/{DRIVE_ID}/view?usp=sharing"


class Server:
    """A 127.0.0.1 server; `route(handler, method)` returns (status, headers, body) or None."""

    def __init__(self):
        self.requests: list[dict] = []
        self.cuts_left = 0
        self.cut_at = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self, method):
                server.requests.append({"method": method, "path": self.path, "range": self.headers.get("Range"),
                                        "auth": self.headers.get("Authorization")})
                answer = server.route(self, method)
                if answer is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, headers, body = answer
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method == "HEAD":
                    return
                if server.cuts_left and len(body) > server.cut_at:
                    server.cuts_left -= 1
                    self.wfile.write(body[: server.cut_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def do_GET(self):
                self._serve("GET")

            def do_HEAD(self):
                self._serve("HEAD")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def route(self, handler, method):
        raise NotImplementedError

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def ranged(handler, data: bytes, headers: dict):
    wanted = handler.headers.get("Range")
    if wanted and wanted.startswith("bytes="):
        start = int(wanted[6:].split("-")[0])
        return 206, {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}, data[start:]
    return 200, headers, data


class HubServer(Server):
    """The Hub's resolve endpoint: HEAD gives the commit, ETag and size; GET the bytes (Range)."""

    def __init__(self, files: dict[str, bytes], token: str | None = None):
        super().__init__()
        self.files, self.token = files, token

    def route(self, handler, method):
        path = urlparse(handler.path).path
        if self.token and handler.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this repo is restricted"}, b""
        data = self.files.get(path)
        if data is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"}, b""
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if method == "HEAD":
            return 200, headers, data  # the body is not sent; the length is announced
        return ranged(handler, data, headers)


CONFIRM_PAGE = (
    '<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
    '<p>Google Drive can\'t scan this file for viruses.</p>'
    '<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
    '<input type="submit" value="Download anyway"/><input type="hidden" name="id" value="{id}">'
    '<input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t">'
    '<input type="hidden" name="uuid" value="5f1d7c8e"></form></body></html>\n')


class DriveServer(Server):
    """Drive for a large file: /uc?id= answers the virus-scan confirmation form; the form's
    request (drive.usercontent.google.com/download ... confirm=t) gets the file."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__()
        self.files = files

    def route(self, handler, method):
        parsed = urlparse(handler.path)
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        data = self.files.get(query.get("id", ""))
        if data is None:
            return None
        if parsed.path == "/uc":
            return 200, {"Content-Type": "text/html; charset=utf-8"}, CONFIRM_PAGE.replace("{id}", query["id"]).encode()
        if parsed.path == "/download" and query.get("confirm") == "t" and query.get("uuid"):
            return ranged(handler, data, {"Content-Type": "application/octet-stream",
                                          "Content-Disposition": 'attachment; filename="tiny-hat.safetensors"'})
        return None


@pytest.fixture(autouse=True)
def store_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORER_HOME", str(tmp_path / "home"))
    for var in ("RESTORER_MIRROR", "HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "RESTORER_DRIVE_BASE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


def catalog(monkeypatch, url: str, sha256: str = SHA, browser: bool = False):
    cat = use_catalog(monkeypatch, tiny_hat_entry("tiny-hat", files=[
        {"name": "tiny-hat.safetensors", "url": url, "sha256": sha256, "size": len(DATA), "browser": browser}]))
    return cat.get("tiny-hat")


def nothing_installed(spec) -> bool:
    d = layout.model_dir(spec)
    return not d.exists() or not any(d.iterdir())


def test_routing():
    assert dl.hf_parts(HF_URL) == ("https://huggingface.co", "someone/tiny-hat", "main", "weights/tiny-hat.safetensors")
    assert dl.drive_file_id(DRIVE_URL) == DRIVE_ID
    assert dl.drive_file_id("https://drive.google.com/drive/folders/1HpmReFfoUqUbnAOQ7rvOeNU3uf_m69w0") is None
    assert dl.can_download(FileSpec("a.pth", DRIVE_URL, browser=True))
    assert not dl.can_download(FileSpec("a.pth", "https://drive.google.com/drive/folders/1yMtXbk6RX?usp=sharing", browser=True))
    assert not dl.can_download(FileSpec("a.pth", "https://pan.baidu.com/s/1abc", browser=True))


def test_install_hint_sends_drive_file_links_to_models_download():
    """A Drive *file* link is fetched by restorer (gdown); only folders, Baidu and login pages
    are saved by hand."""
    from dataclasses import replace

    from restorer.zoo.catalog import install_hint, load_catalog

    spec = load_catalog().get("mirnet-lowlight-lol")
    assert any(f.browser and dl.drive_file_id(f.url) for f in spec.files)
    assert install_hint(spec) == "model 'mirnet-lowlight-lol' is not installed: restorer-cli models download mirnet-lowlight-lol"
    by_hand = replace(spec, files=(FileSpec("model_lol.pth", "https://pan.baidu.com/s/1abc", browser=True),))
    assert "download model_lol.pth in a browser from https://pan.baidu.com/s/1abc" in install_hint(by_hand)


# ---------------------------------------------------------------- Hugging Face


def test_hugging_face_through_huggingface_hub_with_resume(monkeypatch):
    from huggingface_hub import constants

    # the library writes what it received in chunks of this size: resume starts at a chunk
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    spec = catalog(monkeypatch, HF_URL)
    with HubServer({"/someone/tiny-hat/resolve/main/weights/tiny-hat.safetensors": DATA}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.cuts_left, hub.cut_at = 1, len(DATA) // 3
        try:
            installed = dl.download(spec)
        except StoreError as e:  # the library gave up on this call: the next one resumes
            assert "run the same command again" in str(e)
            installed = dl.download(spec)
        gets = [r for r in hub.requests if r["method"] == "GET" and "/resolve/" in r["path"]]
        assert any(r["method"] == "HEAD" for r in hub.requests)
    assert installed == [("tiny-hat", layout.weights_path(spec))]
    assert hashlib.sha256(layout.weights_path(spec).read_bytes()).hexdigest() == SHA
    assert len(gets) >= 2 and gets[0]["range"] is None
    start = int(gets[-1]["range"].removeprefix("bytes=").rstrip("-"))  # resumed, not restarted
    assert 0 < start <= len(DATA) // 3


def test_hugging_face_checksum_mismatch_keeps_nothing(monkeypatch):
    spec = catalog(monkeypatch, HF_URL, sha256="0" * 64)
    with HubServer({"/someone/tiny-hat/resolve/main/weights/tiny-hat.safetensors": DATA}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(StoreError, match="checksum mismatch.*nothing was kept"):
            dl.download(spec)
    assert nothing_installed(spec)


def test_hugging_face_gated_repo_mentions_hf_token(monkeypatch):
    spec = catalog(monkeypatch, HF_URL)
    files = {"/someone/tiny-hat/resolve/main/weights/tiny-hat.safetensors": DATA}
    with HubServer(files, token="hf_secret") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(StoreError) as e:
            dl.download(spec)
        assert "HF_TOKEN" in str(e.value) and "\n" not in str(e.value)
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        dl.download(spec)
        assert hub.requests[-1]["auth"] == "Bearer hf_secret"
    assert layout.is_installed(spec)


def test_unreachable_host_is_said_in_one_line(monkeypatch):
    import socket

    real = socket.getaddrinfo

    def no_dns(host, *args, **kwargs):  # a name that does not resolve, without asking a resolver
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    spec = catalog(monkeypatch, "http://no-such-host.invalid/tiny-hat.safetensors")
    with pytest.raises(StoreError) as e:
        dl.download(spec)
    assert str(e.value).startswith("cannot reach no-such-host.invalid") and "interrupted" not in str(e.value)
    spec = catalog(monkeypatch, HF_URL)
    monkeypatch.setenv("HF_ENDPOINT", "http://no-such-host.invalid")
    with pytest.raises(StoreError) as e:
        dl.download(spec)
    assert str(e.value).startswith("cannot reach no-such-host.invalid"), str(e.value)


# ---------------------------------------------------------------- Google Drive


def test_drive_file_through_gdown_answers_the_confirmation_page(monkeypatch):
    spec = catalog(monkeypatch, DRIVE_URL, browser=True)
    with DriveServer({DRIVE_ID: DATA}) as drive:
        monkeypatch.setenv("RESTORER_DRIVE_BASE", drive.url)
        installed = dl.download(spec)
        paths = [urlparse(r["path"]).path for r in drive.requests]
    assert installed == [("tiny-hat", layout.weights_path(spec))]
    assert paths[:2] == ["/uc", "/download"]  # the confirmation form, then the confirmed request
    assert hashlib.sha256(layout.weights_path(spec).read_bytes()).hexdigest() == SHA
    assert not list((layout.home() / "downloads").glob("*.part"))


def test_drive_checksum_mismatch_keeps_nothing(monkeypatch):
    spec = catalog(monkeypatch, DRIVE_URL, sha256="f" * 64, browser=True)
    with DriveServer({DRIVE_ID: DATA}) as drive:
        monkeypatch.setenv("RESTORER_DRIVE_BASE", drive.url)
        with pytest.raises(StoreError, match="checksum mismatch.*nothing was kept"):
            dl.download(spec)
    assert nothing_installed(spec)
    assert not list((layout.home() / "downloads").glob("*tiny-hat*"))


def test_drive_folders_and_baidu_stay_by_hand(monkeypatch):
    for url in ("https://drive.google.com/drive/folders/1HpmReFfoUqUbnAOQ7rvOeNU3uf_m69w0",
                "https://pan.baidu.com/s/1abcdEFG"):
        spec = catalog(monkeypatch, url, browser=True)
        with pytest.raises(StoreError) as e:
            dl.download(spec)
        message = str(e.value)
        assert "\n" not in message and url in message
        assert "restorer-cli models add tiny-hat.safetensors --id tiny-hat" in message
