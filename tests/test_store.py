"""The model store: safe loading, recognition of every released checkpoint, import of files
and archives, downloads (progress, resume, checksum, errors) from 127.0.0.1, verify/remove,
runners, and ONNX export with a parity check."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from restorer.run.loader import build_runner

from restorer.zoo import download as download_mod
from restorer.zoo import install
from restorer.zoo import layout
from restorer.zoo import recognise as recognise_mod
from restorer.zoo import weights as store_weights
from restorer.archs import ARCHS
from restorer.zoo.catalog import load_catalog
from restorer.zoo.layout import StoreError
from tests.store_helpers import (
    HAT_TINY, FileServer, locate_manifest, manifest_entries, released_rows, tiny_hat_entry, use_catalog,
    write_pth, write_sparse_safetensors,
)

ROWS = released_rows()


@pytest.fixture(autouse=True)
def store_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RESTORER_HOME", str(home))
    monkeypatch.delenv("RESTORER_MIRROR", raising=False)
    return home


def tiny_bytes(name: str = "hat_tiny_x2") -> bytes:
    return (HAT_TINY / f"{name}.safetensors").read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- every released checkpoint


def catalog_entry_for(row: dict):
    specs = [s for s in load_catalog() if s.manifest == row["manifest"] and s.files]
    assert specs, f"no catalog entry names {row['manifest']}"
    spec = specs[0]
    assert spec.arch in ARCHS, f"{spec.id}: arch {spec.arch} is not registered"
    recognise_mod.signature(spec)  # an arch that cannot be built is a failure, not a skip
    if locate_manifest(row["manifest"]) is None:
        pytest.fail(f"{row['manifest']} is not copied into tests/fixtures")
    return spec


@pytest.mark.parametrize("row", ROWS, ids=[r["manifest"].removesuffix(".keys.json") for r in ROWS])
def test_released_checkpoint_is_recognised_and_a_broken_one_refused(row, tmp_path):
    """A file with a released checkpoint's names and shapes is installed as its catalog
    entry (named as the release names it, unpacked as the release ships it); the same file
    with one tensor of the wrong shape is refused, naming that tensor."""
    spec = catalog_entry_for(row)
    f = layout.weights_file(spec)
    rel = f.member or f.name  # old-photo checkpoints ship in zips: the unpacked path decides
    entries = manifest_entries(row["manifest"])
    path = tmp_path / "release" / rel  # safetensors content under the release's .pth name
    write_sparse_safetensors(path, entries)
    assert [m.spec.id for m in recognise_mod.recognise(path)] == [spec.id]
    if f.sha256:  # the catalog knows the real file: a look-alike is recognised, not installed
        with pytest.raises(StoreError, match="differs from the catalog's"):
            install.add(path)
    else:
        result = install.add(path)
        assert [i for i, _ in result.installed] == [spec.id]
        assert layout.is_installed(spec)

    broken = tmp_path / "broken" / rel
    bad = write_sparse_safetensors(broken, entries, broken="first")
    with pytest.raises(StoreError, match=f"tensor {bad}: expected shape") as info:
        install.add(broken)
    assert "\n" not in str(info.value)


SMALL = [r for r in ROWS if r["params"] and r["params"] < 1_500_000]


@pytest.mark.parametrize("row", SMALL, ids=[r["manifest"].removesuffix(".keys.json") for r in SMALL])
def test_small_released_checkpoint_as_official_pth(row, tmp_path):
    spec = catalog_entry_for(row)
    f = layout.weights_file(spec)
    path = tmp_path / "release" / (f.member or f.name)
    write_pth(path, manifest_entries(row["manifest"]), row["wrapper_key"])
    assert [m.spec.id for m in recognise_mod.recognise(path)] == [spec.id]


# ---------------------------------------------------------------- safe loading


class Payload:
    """Pickles to a call that would create a marker file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["torch-zip", "raw-pickle"])
def test_pickle_that_calls_a_function_is_refused_and_never_runs(kind, tmp_path):
    import torch

    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    if kind == "torch-zip":
        torch.save({"params": {"w": torch.zeros(2)}, "x": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"x": Payload(marker)}))
    for attempt in (lambda: store_weights.load_state_dict(path), lambda: recognise_mod.recognise(path), lambda: install.add(path)):
        with pytest.raises(StoreError, match=r"^evil\.pth: refusing to load it") as info:
            attempt()
        assert "\n" not in str(info.value)
    assert not marker.exists()


def test_wrapper_keys_and_module_prefix(tmp_path, monkeypatch):
    import torch

    cat = use_catalog(monkeypatch, tiny_hat_entry("tiny-a", wrapper_key="params"))
    spec = cat.get("tiny-a")
    path = tmp_path / "both.pth"
    torch.save({"params_ema": {"module.w": torch.zeros(1)}, "params": {"module.w": torch.ones(1)}}, path)
    assert store_weights.load_state_dict(path, spec)["w"].item() == 1.0  # the spec's key comes first
    assert store_weights.load_state_dict(path)["w"].item() == 0.0  # else basicsr's order: params_ema first
    entries = [[k, list(v.shape), "int64" if v.dtype == np.int64 else "float32"]
               for k, v in store_weights.load_state_dict(HAT_TINY / "hat_tiny_x2.safetensors").items()]
    path = tmp_path / "tiny-a.pth"
    write_pth(path, entries, "params_ema", prefix="module.")
    assert [m.spec.id for m in recognise_mod.recognise(path)] == ["tiny-a"]


# ---------------------------------------------------------------- recognition and add


def test_shared_signature_is_told_apart_by_name_else_asks_for_id(tmp_path, monkeypatch):
    use_catalog(monkeypatch, tiny_hat_entry("hat-x", files=[{"name": "HAT_SRx4.pth"}])
                + tiny_hat_entry("hat-x-imagenet", files=[{"name": "HAT_SRx4_ImageNet-pretrain.pth"}]))
    data = tiny_bytes()
    named = tmp_path / "hat_srx4_imagenet-PRETRAIN.safetensors"
    named.write_bytes(data)
    assert [m.spec.id for m in recognise_mod.recognise(named)] == ["hat-x-imagenet"]
    anonymous = tmp_path / "download (1).safetensors"
    anonymous.write_bytes(data)
    assert sorted(m.spec.id for m in recognise_mod.recognise(anonymous)) == ["hat-x", "hat-x-imagenet"]
    with pytest.raises(StoreError, match=r"fits several catalog models \(hat-x, hat-x-imagenet\); say which with --id"):
        install.add(anonymous)
    result = install.add(anonymous, "hat-x")
    assert result.installed[0][1].name == "HAT_SRx4.pth"  # stored under the catalog's name


def test_no_match_names_the_closest_entry(tmp_path, monkeypatch):
    use_catalog(monkeypatch, tiny_hat_entry("tiny-x2") + tiny_hat_entry("tiny-x4", tiny="hat_tiny_x4"))
    tensors = store_weights.load_state_dict(HAT_TINY / "hat_tiny_x2.safetensors")
    tensors["extra.bias"] = tensors["conv_last.bias"].copy()
    from safetensors.numpy import save_file

    path = tmp_path / "mine.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path)
    with pytest.raises(StoreError, match=r"mine.safetensors matches no catalog model; closest is 'tiny-x2' .*unexpected tensor extra.bias"):
        recognise_mod.recognise(path)
    with pytest.raises(StoreError, match=r"is not a checkpoint of 'tiny-x4': tensor .*expected shape"):
        recognise_mod.recognise(HAT_TINY / "hat_tiny_x2.safetensors", "tiny-x4")


def zip_with(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            z.writestr(info, "/etc/passwd")
    return path


ARCHIVE_CATALOG = (
    tiny_hat_entry("part-a", files=[{"name": "latest_net_G.pth", "member": "checkpoints/A/latest_net_G.pth"}])
    + tiny_hat_entry("part-b", files=[{"name": "latest_net_G.pth", "member": "checkpoints/B/latest_net_G.pth"}])
    + tiny_hat_entry("other-x3", tiny="hat_tiny_x3")
)


def test_archive_members_are_recognised_by_their_path(tmp_path, monkeypatch, store_home):
    use_catalog(monkeypatch, ARCHIVE_CATALOG)
    archive = zip_with(tmp_path / "checkpoints.zip", {
        "checkpoints/B/latest_net_G.pth": tiny_bytes(),  # content decides the format, not the name
        "checkpoints/x3.safetensors": tiny_bytes("hat_tiny_x3"),
        "checkpoints/notes/readme.txt": b"hello",
        "checkpoints/junk.pth": b"not a checkpoint",
    })
    result = install.add(archive)
    assert sorted(i for i, _ in result.installed) == ["other-x3", "part-b"]
    assert len(result.unmatched) == 1 and "junk.pth" in result.unmatched[0]
    assert (store_home / "models" / "part-b" / "latest_net_G.pth").read_bytes() == tiny_bytes()
    record = json.loads((store_home / "models" / "part-b" / "installed.json").read_text())
    assert record["latest_net_G.pth"]["sha256"] == sha(tiny_bytes())


@pytest.mark.parametrize("bad", ["../evil.safetensors", "/abs/evil.safetensors", "ok/../../evil.safetensors", "link"])
def test_archive_escaping_its_folder_is_refused_before_anything_is_extracted(bad, tmp_path, monkeypatch, store_home):
    use_catalog(monkeypatch, ARCHIVE_CATALOG)
    members = {"checkpoints/A/latest_net_G.safetensors": tiny_bytes()}
    if bad == "link":
        archive = zip_with(tmp_path / "x.zip", members, symlink="checkpoints/link.pth")
    else:
        archive = zip_with(tmp_path / "x.zip", {**members, bad: tiny_bytes()})
    with pytest.raises(StoreError, match="refusing the archive"):
        install.add(archive)
    assert not (store_home / "models").exists()
    assert not list(tmp_path.rglob("evil.safetensors"))


# ---------------------------------------------------------------- downloads


def served_catalog(monkeypatch, server: FileServer, **file_fields):
    fields = {"name": "tiny.safetensors", "url": f"{server.url}/files/tiny.safetensors", **file_fields}
    return use_catalog(monkeypatch, tiny_hat_entry("tiny-dl", files=[fields])).get("tiny-dl")


def test_download_with_progress_and_checksum(monkeypatch, store_home):
    data = tiny_bytes()
    with FileServer({"/files/tiny.safetensors": data}) as server:
        spec = served_catalog(monkeypatch, server, sha256=sha(data), size=len(data))
        seen = []
        installed = download_mod.download(spec, progress=lambda done, total: seen.append((done, total)))
    assert [i for i, _ in installed] == ["tiny-dl"]
    assert (store_home / "models" / "tiny-dl" / "tiny.safetensors").read_bytes() == data
    assert seen[-1] == (len(data), len(data)) and len(seen) > 1
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert not list((store_home / "downloads").iterdir())
    assert install.verify(spec) == []


def test_interrupted_download_is_resumed_with_a_range_request(monkeypatch, store_home):
    data = tiny_bytes()
    with FileServer({"/files/tiny.safetensors": data}) as server:
        spec = served_catalog(monkeypatch, server, sha256=sha(data))
        server.cut_at, server.cuts_left = 300_000, 1
        download_mod.download(spec)
    assert [r["range"] for r in server.requests] == [None, "bytes=300000-"]
    assert (store_home / "models" / "tiny-dl" / "tiny.safetensors").read_bytes() == data


def test_transfer_cut_every_time_keeps_the_part_for_the_next_run(monkeypatch, store_home):
    data = tiny_bytes()
    with FileServer({"/files/tiny.safetensors": data}) as server:
        spec = served_catalog(monkeypatch, server, sha256=sha(data))
        server.cut_at, server.cuts_left = 100_000, 3
        with pytest.raises(StoreError, match="interrupted.*run the same command again to resume"):
            download_mod.download(spec)
        parts = list((store_home / "downloads").glob("*.part"))
        assert len(parts) == 1 and parts[0].stat().st_size == 300_000
        download_mod.download(spec)
    assert server.requests[-1]["range"] == "bytes=300000-"
    assert (store_home / "models" / "tiny-dl" / "tiny.safetensors").read_bytes() == data


def test_wrong_checksum_keeps_nothing(monkeypatch, store_home):
    with FileServer({"/files/tiny.safetensors": tiny_bytes()}) as server:
        spec = served_catalog(monkeypatch, server, sha256="0" * 64)
        with pytest.raises(StoreError, match="checksum mismatch for tiny.safetensors .*nothing was kept"):
            download_mod.download(spec)
    assert not layout.is_installed(spec)
    assert not list(store_home.rglob("*.safetensors")) and not list(store_home.rglob("*.part"))


def test_unknown_checksum_still_checks_the_tensors(monkeypatch, store_home):
    with FileServer({"/files/tiny.safetensors": b"<html>sign in to Google Drive</html>"}) as server:
        spec = served_catalog(monkeypatch, server)
        with pytest.raises(StoreError, match="not a usable checkpoint.*nothing was kept"):
            download_mod.download(spec)
    assert not list(store_home.rglob("*.safetensors")) and not list(store_home.rglob("*.part"))


@pytest.mark.parametrize("status", [500, 404])
def test_server_error_is_reported_with_status_and_url(status, monkeypatch, store_home):
    with FileServer({"/files/tiny.safetensors": tiny_bytes()}) as server:
        spec = served_catalog(monkeypatch, server)
        server.status = status
        with pytest.raises(StoreError, match=rf"HTTP {status} .* from {server.url}/files/tiny.safetensors$"):
            download_mod.download(spec)
    assert not layout.is_installed(spec)


def test_browser_only_file_is_not_fetched(monkeypatch):
    spec = use_catalog(monkeypatch, tiny_hat_entry("tiny-gd", files=[{
        "name": "HAT_SRx2.pth", "url": "https://drive.google.com/drive/folders/XYZ", "browser": True}])).get("tiny-gd")
    with pytest.raises(StoreError) as info:
        download_mod.download(spec)
    message = str(info.value)
    assert "https://drive.google.com/drive/folders/XYZ" in message
    assert "restorer-cli models add HAT_SRx2.pth --id tiny-gd" in message


def test_mirror_serves_files_by_name(monkeypatch, store_home):
    data = tiny_bytes()
    with FileServer({"/mirror/tiny.safetensors": data}) as server:
        spec = use_catalog(monkeypatch, tiny_hat_entry("tiny-m", files=[{
            "name": "tiny.safetensors", "url": "https://example.invalid/a/b/tiny.safetensors?download=1",
            "sha256": sha(data)}])).get("tiny-m")
        monkeypatch.setenv("RESTORER_MIRROR", f"{server.url}/mirror/")
        download_mod.download(spec)
    assert server.requests[0]["path"] == "/mirror/tiny.safetensors"
    assert layout.is_installed(spec)


def test_downloaded_archive_installs_every_entry_it_holds(tmp_path, monkeypatch, store_home):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("checkpoints/A/latest_net_G.pth", tiny_bytes())  # safetensors bytes under a .pth name
        z.writestr("checkpoints/B/latest_net_G.pth", tiny_bytes())
    with FileServer({"/rel/checkpoints.zip": buffer.getvalue()}) as server:
        url = f"{server.url}/rel/checkpoints.zip"
        cat = use_catalog(monkeypatch, tiny_hat_entry("part-a", files=[{
            "name": "latest_net_G.safetensors", "url": url, "member": "checkpoints/A/latest_net_G.pth"}])
            + tiny_hat_entry("part-b", files=[{
                "name": "latest_net_G.safetensors", "url": url, "member": "checkpoints/B/latest_net_G.pth",
                "sha256": sha(tiny_bytes())}]))
        installed = download_mod.download(cat.get("part-a"))
    assert sorted(i for i, _ in installed) == ["part-a", "part-b"]
    assert layout.is_installed(cat.get("part-b")) and len(server.requests) == 1
    assert not list((store_home / "downloads").iterdir())


# ---------------------------------------------------------------- verify, remove, runners, export


def installed_tiny(monkeypatch, tmp_path, **fields):
    spec = use_catalog(monkeypatch, tiny_hat_entry("tiny-hat", **fields)).get("tiny-hat")
    source = tmp_path / "tiny-hat.safetensors"
    source.write_bytes(tiny_bytes())
    install.add(source)
    return spec


def test_verify_and_remove(tmp_path, monkeypatch, store_home):
    spec = installed_tiny(monkeypatch, tmp_path)
    assert install.verify(spec) == []
    path = layout.weights_path(spec)
    path.unlink()  # a hard link to the source: replace it, as an edit would
    path.write_bytes(tiny_bytes()[:-4] + b"\0\0\0\1")
    assert any("changed since it was installed" in p for p in install.verify(spec))
    assert install.remove(spec)
    assert not layout.is_installed(spec) and not (store_home / "models" / "tiny-hat").exists()


def test_runner_not_installed_says_how_to_install(monkeypatch):
    spec = use_catalog(monkeypatch, tiny_hat_entry("tiny-hat", files=[{"name": "t.pth", "url": "https://x/t.pth"}])).get("tiny-hat")
    with pytest.raises(StoreError, match=r"^model 'tiny-hat' is not installed: restorer-cli models download tiny-hat$"):
        build_runner(spec)
