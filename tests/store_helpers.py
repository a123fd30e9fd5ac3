"""Helpers for the model-store tests: checkpoints written from manifests, a test catalog,
and a local HTTP server that can cut a transfer short or fail."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from restorer.zoo import catalog as catalog_module
from tests.manifests import FIXTURES, load_manifest

HAT_TINY = FIXTURES / "hat" / "tiny"
ST_DTYPES = {"float32": ("F32", 4), "int64": ("I64", 8), "float16": ("F16", 2)}


def write_sparse_safetensors(path: Path, entries: list, broken: str | None = None) -> str | None:
    """A valid safetensors file with the manifest's names and shapes and all-zero data,
    written as a header plus a hole (truncate), so even a 40M-parameter file costs nothing.
    With `broken` = "first", the first float tensor of rank >= 1 gets every dimension + 1;
    returns the name of the broken tensor."""
    header, offset, bad = {}, 0, None
    for name, shape, dtype in entries:
        shape = list(shape)
        if broken and bad is None and dtype.startswith("float") and len(shape) >= 1:
            shape, bad = [s + 1 for s in shape], name
        code, size = ST_DTYPES[dtype]
        nbytes = math.prod(shape) * size
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        f.truncate(8 + len(blob) + offset)
    return bad


def write_pth(path: Path, entries: list, wrapper_key: str | None, prefix: str = "") -> None:
    """A torch.save checkpoint laid out like an official one (wrapper key, zero tensors)."""
    import torch

    dtypes = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}
    tensors = {prefix + name: torch.zeros(shape, dtype=dtypes[dtype]) for name, shape, dtype in entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({wrapper_key: tensors, "iter": 1000} if wrapper_key else tensors, path)


def locate_manifest(manifest: str) -> Path | None:
    """The copy under tests/fixtures of a shared manifest path such as 'hat/HAT_SRx4.keys.json'
    (family engineers keep them at tests/fixtures/<family>/, some under manifests/)."""
    family, name = manifest.split("/")[0], manifest.split("/")[-1]
    hits = sorted((FIXTURES / family).rglob(name)) if (FIXTURES / family).is_dir() else []
    # mirnet/v2/sr_x2.keys.json must not be confused with a v1 file of the same name
    exact = [h for h in hits if h.as_posix().endswith(manifest.split("/", 1)[1])]
    return (exact or hits or [None])[0]


def released_rows() -> list[dict]:
    rows = json.loads((FIXTURES / "MANIFESTS.json").read_text())
    return [r for r in rows if r["released"] and r["complete"]]


def manifest_entries(manifest: str) -> list:
    return load_manifest(locate_manifest(manifest))[1]


def hat_tiny_hparams(name: str = "hat_tiny_x2") -> dict:
    return json.loads((HAT_TINY / f"{name}.json").read_text())["hyperparameters"]


def toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def tiny_hat_entry(model_id: str, tiny: str = "hat_tiny_x2", files: list[dict] | None = None, **fields) -> str:
    """A catalog [[model]] table for a tiny HAT (the conformance fixture's configuration)."""
    hp = hat_tiny_hparams(tiny)
    values = {
        "id": model_id, "title": f"tiny HAT {model_id}", "family": "hat", "tasks": ["superres"], "arch": "HAT",
        "hparams": hp, "scale": hp["upscale"], "channels": 3, "pad_multiple": hp["window_size"], "overlap": 4,
        "tile": 16, "rank": 90, "precisions": ["fp32"], "licence": "MIT", "wrapper_key": "params_ema",
    }
    values.update(fields)
    text = "[[model]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
    for f in files if files is not None else [{"name": f"{model_id}.safetensors"}]:
        text += "[[model.files]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in f.items())
    return text


def use_catalog(monkeypatch, text: str):
    """Make `text` the catalog everything loads (store, planner, CLI)."""
    cat = catalog_module.parse(text)
    monkeypatch.setattr(catalog_module, "_PINNED", cat)
    return cat


class FileServer:
    """Serves bytes from 127.0.0.1 with Range support; can cut the next N transfers after
    `cut_at` bytes (Content-Length still announcing the whole), or answer with `status`."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[dict] = []
        self.cut_at: int | None = None
        self.cuts_left = 0
        self.status: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if server.status:
                    self.send_error(server.status, "test failure")
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "not found")
                    return
                start, code = 0, 200
                wanted = self.headers.get("Range")
                if wanted and wanted.startswith("bytes="):
                    start, code = int(wanted[6:].split("-")[0]), 206
                    if start >= len(data):
                        self.send_error(416, "range not satisfiable")
                        return
                body = data[start:]
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if server.cuts_left and server.cut_at is not None:
                    server.cuts_left -= 1
                    self.wfile.write(body[: server.cut_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
