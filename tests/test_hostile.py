"""Hostile and awkward inputs, as a table: each builds its input in tmp_path, runs
restorer-cli, and must give the documented exit code, exactly one stderr line naming the
file (or the option), no traceback, no partial or temporary file, and the input unchanged.

Exit codes (README.md, "Exit codes"): 0 all done, 1 some files failed, 2 nothing could be
done, 130 Ctrl-C, 141 the output pipe closed, 143 SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from restorer import cli
from restorer.zoo import download, install
from tests.store_helpers import tiny_hat_entry, use_catalog

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "kodim05_crop256.png"


def photo(path: Path, size=(48, 32), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(SAMPLE).convert("RGB").crop((0, 0, *size)).convert(mode).save(path)
    return path


def zip_with(path: Path, name: str, data: bytes, method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr(name, data)
    return path


def declare_size(path: Path, size: int) -> Path:
    """Rewrite the uncompressed size a zip's (only) member declares, in both of its headers."""
    data = bytearray(path.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, size)
    struct.pack_into("<I", data, central + 24, size)
    path.write_bytes(bytes(data))
    return path


# ---------------------------------------------------------------- the corpus


@dataclass
class Case:
    id: str
    build: Callable[[Path], tuple[list[str], str]]  # tmp -> (argv, the name one line must say)
    code: int
    says: str  # in that line
    setup: Callable[[pytest.MonkeyPatch], None] | None = None


def safetensors_huge_header(tmp):
    f = tmp / "in" / "huge-header.safetensors"
    f.parent.mkdir()
    f.write_bytes((2 ** 60).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}')
    return ["models", "add", str(f)], f.name


def safetensors_endless_nesting(tmp):
    f = tmp / "in" / "nested.safetensors"
    f.parent.mkdir()
    header = b"{\"w\": " + b"[" * 200_000
    f.write_bytes(len(header).to_bytes(8, "little") + header)
    return ["models", "add", str(f)], f.name


def text_named_pth(tmp):
    f = tmp / "in" / "x.pth"
    f.parent.mkdir()
    f.write_text("these are my notes about the model, not the model\n" * 3)
    return ["models", "add", str(f)], f.name


def web_page_named_pth(tmp):
    f = tmp / "in" / "model.pth"
    f.parent.mkdir()
    f.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>")
    return ["models", "add", str(f)], f.name


def zip_bomb_ratio(tmp):  # 20 MB of zeros in ~20 KB: 1000 to 1
    (tmp / "in").mkdir()
    f = zip_with(tmp / "in" / "bomb.zip", "weights/net.pth", bytes(20 << 20))
    return ["models", "add", str(f)], "bomb.zip"


def pth_zip_bomb(tmp):  # torch.save's zip layout, its pickle 20 MB of zeros deflated
    (tmp / "in").mkdir()
    f = zip_with(tmp / "in" / "bomb.pth", "archive/data.pkl", bytes(20 << 20))
    return ["models", "add", str(f)], "bomb.pth"


def zip_declares_too_much(tmp):  # a member stored as is, over the (lowered) size limit
    (tmp / "in").mkdir()
    f = zip_with(tmp / "in" / "big.zip", "net.pth", os.urandom(3 << 20), zipfile.ZIP_STORED)
    return ["models", "add", str(f)], "big.zip"


def zip_over_free_space(tmp):
    (tmp / "in").mkdir()
    f = zip_with(tmp / "in" / "fits-not.zip", "net.pth", os.urandom(1 << 20), zipfile.ZIP_STORED)
    return ["models", "add", str(f)], "fits-not.zip"


def zip_member_lies(tmp):  # it inflates past the size it declares (kept under the ratio check)
    (tmp / "in").mkdir()
    f = declare_size(zip_with(tmp / "in" / "liar.zip", "net.pth", os.urandom(4096)), 1000)
    return ["models", "add", str(f)], "liar.zip"


def animated_gif(tmp):
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "green", "blue")]
    f = tmp / "in" / "hostile-anim.gif"
    f.parent.mkdir()
    frames[0].save(f, save_all=True, append_images=frames[1:], duration=80, loop=0)
    return [str(f), "-o", str(tmp / "out"), "--task", "denoise"], f.name


def multipage_tiff_in_a_folder(tmp):
    pages = [Image.new("RGB", (16, 16), c) for c in ("red", "green")]
    f = tmp / "in" / "scan-pages.tif"
    f.parent.mkdir()
    pages[0].save(f, save_all=True, append_images=pages[1:])
    photo(tmp / "in" / "good.png")
    return [str(tmp / "in"), "-o", str(tmp / "out"), "--task", "denoise"], f.name


def over_max_pixels(tmp):
    f = photo(tmp / "in" / "big-photo.png", (64, 64))
    return [str(f), "-o", str(tmp / "out"), "--task", "denoise", "--max-pixels", "1000"], f.name


def cmyk_jpeg(tmp):
    f = tmp / "in" / "print-cmyk.jpg"
    f.parent.mkdir()
    Image.open(SAMPLE).convert("RGB").crop((0, 0, 40, 32)).convert("CMYK").save(f, quality=90)
    return [str(f), "-o", str(tmp / "out"), "--task", "denoise"], f.name


def bad_jpeg(tmp):
    f = tmp / "in" / "broken.jpg"
    f.parent.mkdir()
    f.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return [str(f), "-o", str(tmp / "out"), "--task", "denoise"], f.name


def bad_jpeg_in_a_folder(tmp):
    argv, name = bad_jpeg(tmp)
    return [str(tmp / "in"), *argv[1:]], name


def empty_folder(tmp):
    (tmp / "in").mkdir()
    (tmp / "in" / "readme.txt").write_text("no pictures here\n")
    return [str(tmp / "in"), "-o", str(tmp / "out"), "--task", "denoise"], "in"


def output_is_a_file(tmp):
    f = photo(tmp / "in" / "p.png")
    (tmp / "out").write_text("I am a file\n")
    return [str(f), "-o", str(tmp / "out"), "--task", "denoise"], "out"


def option(flag, value):
    def build(tmp):
        f = photo(tmp / "in" / "p.png")
        return [str(f), "-o", str(tmp / "out"), "--task", "denoise", flag, value], flag
    return build


def lower(name, value):
    return lambda mp: mp.setattr(install, name, value)


def little_free_space(mp):
    import shutil

    mp.setattr(install.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 100 << 20))


CASES = [
    Case("safetensors-header-2**60", safetensors_huge_header, 2, "header claims 1152921504606846976 bytes"),
    Case("safetensors-nested-json", safetensors_endless_nesting, 2, "the header is not JSON"),
    Case("text-named-pth", text_named_pth, 2, "x.pth: not a PyTorch checkpoint (it is text)"),
    Case("web-page-named-pth", web_page_named_pth, 2, "not a PyTorch checkpoint (it is a web page"),
    Case("zip-bomb-ratio", zip_bomb_ratio, 2, "(a zip bomb?)"),
    Case("pth-zip-bomb", pth_zip_bomb, 2, "bomb.pth: not a readable PyTorch checkpoint: member archive/data.pkl inflates"),
    Case("zip-member-over-limit", zip_declares_too_much, 2, "over the limit of 2097152", lower("MAX_MEMBER_BYTES", 2 << 20)),
    Case("zip-over-free-space", zip_over_free_space, 2, "MB free; nothing was extracted", little_free_space),
    Case("zip-member-lies", zip_member_lies, 2, "damaged zip archive"),
    Case("animated-gif", animated_gif, 2, "an animated GIF of 3 frames"),
    Case("multipage-tiff", multipage_tiff_in_a_folder, 1, "a TIFF of 2 pages"),
    Case("over-max-pixels", over_max_pixels, 2, "64x64 is 4096 pixels, over the limit of 1000 pixels (a guard"),
    Case("cmyk-note", cmyk_jpeg, 0, "CMYK image converted to RGB"),
    Case("unreadable-file", bad_jpeg, 2, "cannot read: the file is truncated or corrupt"),
    Case("unreadable-file-in-folder", bad_jpeg_in_a_folder, 2, "cannot read: the file is truncated or corrupt"),
    Case("empty-folder", empty_folder, 2, "no images found in"),
    Case("output-is-a-file", output_is_a_file, 2, "is a file, not a folder"),
    Case("quality-500", option("--quality", "500"), 2, "500 is out of range (from 1 to 100)"),
    Case("max-pixels-0", option("--max-pixels", "0"), 2, "0 is out of range (at least 1)"),
    Case("tile-0", option("--tile", "0"), 2, "out of range (at least 32)"),
    Case("tile-1", option("--tile", "1"), 2, "out of range (at least 32)"),
    Case("strength-5", option("--strength", "5"), 2, "out of range (from 0 to 1)"),
    Case("strength-nan", option("--strength", "nan"), 2, "out of range (from 0 to 1)"),
    Case("dilate-negative", option("--dilate", "-3"), 2, "out of range (at least 0)"),
]


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}


def leftovers(tmp: Path) -> list[Path]:
    """Partial or temporary files anywhere (outputs, the store), run markers, and folders
    left in the store's scratch space (where archive members are extracted)."""
    scratch = tmp / "home" / "tmp"
    return [p for p in tmp.rglob("*") if p.suffix in (".part", ".tmp") or p.name.startswith(".restorer-run-")
            or p.parent == scratch]


def images_in(folder: Path) -> list[Path]:
    """The files a run wrote there (restorer's own bookkeeping files start with a dot)."""
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")] if folder.is_dir() else []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESTORER_HOME", str(tmp_path / "home"))
    if case.setup:
        case.setup(monkeypatch)
    argv, name = case.build(tmp_path)
    before = snapshot(tmp_path / "in")
    code = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == case.code, captured.err
    assert "Traceback" not in captured.err
    naming = [line for line in lines if name in line]
    assert len(naming) == 1, lines
    assert naming[0].startswith("restorer-cli: ") and case.says in naming[0], naming[0]
    assert snapshot(tmp_path / "in") == before  # inputs unchanged, nothing added beside them
    assert not leftovers(tmp_path)
    if code == 2:  # nothing was written, nothing installed
        assert not images_in(tmp_path / "out") and not images_in(tmp_path / "home" / "models")


def test_pillows_own_bomb_limit_follows_max_pixels(tmp_path, monkeypatch, capsys):
    """A real photo over Pillow's default 179 MP limit but under --max-pixels (the default
    400 MP) is restored: Pillow's limit, lowered here to stand in for a 196 MP photo, follows ours."""
    f = photo(tmp_path / "in" / "p.png", (64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses over 2000 pixels
    assert cli.main([str(f), "-o", str(tmp_path / "out"), "--task", "denoise"]) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "p.png").stat().st_size > 0
    assert Image.MAX_IMAGE_PIXELS == 1000  # put back
    assert cli.main([str(f), "-o", str(tmp_path / "out2"), "--task", "denoise", "--max-pixels", "5000"]) == 0


def test_same_failure_same_code_for_a_file_and_a_folder(tmp_path, capsys):
    bad = tmp_path / "one" / "bad.png"
    bad.parent.mkdir()
    bad.write_text("not an image")
    two = tmp_path / "two"
    two.mkdir()
    for n in ("a", "b"):
        (two / f"{n}.png").write_text("not an image")
    mixed = tmp_path / "mixed"
    photo(mixed / "good.png")
    (mixed / "bad.png").write_text("not an image")
    out = tmp_path / "out"
    assert cli.main([str(bad), "-o", str(out / "1"), "--task", "denoise"]) == 2
    assert cli.main([str(bad.parent), "-o", str(out / "2"), "--task", "denoise"]) == 2
    assert cli.main([str(two), "-o", str(out / "3"), "--task", "denoise"]) == 2  # every file failed
    assert cli.main([str(mixed), "-o", str(out / "4"), "--task", "denoise"]) == 1  # some did
    err = capsys.readouterr().err
    assert err.count("bad.png: cannot read") == 3 and err.count("a.png: cannot read") == 1  # each said once


def test_dns_failure_says_the_host_cannot_be_reached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESTORER_HOME", str(tmp_path / "home"))
    use_catalog(monkeypatch, tiny_hat_entry("tiny-hat", files=[
        {"name": "tiny-hat.safetensors", "url": "https://example.org/tiny-hat.safetensors"}]))
    monkeypatch.setenv("RESTORER_MIRROR", "http://no-such-host.invalid/m")
    real = socket.getaddrinfo

    def no_dns(host, *args, **kwargs):  # EAI_NODATA, as Docker's and Android's resolvers say it
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NODATA, "No address associated with hostname")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert cli.main(["models", "download", "tiny-hat"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["restorer-cli: cannot reach no-such-host.invalid: [Errno -5] No address associated with hostname"]
    # the words other clients use for it, wrapped the way requests and huggingface_hub wrap errors
    for text in ("request error: dns error: failed to lookup address information: Name does not resolve",
                 "HTTPSConnectionPool: Max retries exceeded (Caused by NameResolutionError(...))"):
        wrapped = RuntimeError("download failed", OSError(text))
        assert str(download._unreachable("https://cas-bridge.example/x", wrapped)).startswith("cannot reach cas-bridge")
    assert download._unreachable("https://h/x", TimeoutError("read timed out")) is None  # that one is resumable


def test_device_cuda_with_builtin_operators_warns_once(tmp_path, capsys):
    for n in range(2):
        photo(tmp_path / "in" / f"p{n}.png")
    assert cli.main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--task", "denoise", "--device", "cuda"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "CUDA was asked for" in warnings[0] and "CPU" in warnings[0]
    assert cli.main([str(tmp_path / "in"), "-o", str(tmp_path / "out2"), "--task", "denoise", "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err


# ---------------------------------------------------------------- processes: pipes and signals


def spawn(argv: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "restorer.cli", *argv], env={**os.environ, **env},
                            stderr=subprocess.PIPE, text=True, **kw)


POSIX = pytest.mark.skipif(os.name == "nt", reason="POSIX signals and EPIPE (Windows reports a closed pipe as EINVAL)")


@POSIX
@pytest.mark.parametrize("what", ["models-list", "batch-json"])
def test_closed_pipe_exits_quietly(what, tmp_path):
    """`restorer-cli models list | head -1`: the reader is gone before we write (its end of
    the pipe closed at once), so every write fails; no traceback, exit 141, outputs kept."""
    f = photo(tmp_path / "in" / "p.png")
    argv = ["models", "list"] if what == "models-list" else [str(f), "-o", str(tmp_path / "out"), "--task",
                                                              "denoise", "--json"]
    read, write = os.pipe()
    os.close(read)
    proc = spawn(argv, {"RESTORER_HOME": str(tmp_path / "home")}, stdout=write)
    os.close(write)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    if what == "batch-json":
        assert Image.open(tmp_path / "out" / "p.png").size == (48, 32)


@POSIX
@pytest.mark.parametrize("sig, code, says", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_stops_cleanly(sig, code, says, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    rgb = np.asarray(Image.open(SAMPLE).convert("RGB"))
    src.mkdir()
    for n in range(40):
        Image.fromarray(np.roll(rgb, n * 5, axis=1)).save(src / f"p{n:02d}.png")
    before = snapshot(src)
    # SIGINT as a terminal sends it, even where pytest itself runs with it ignored (`cmd &`)
    proc = spawn([str(src), "-o", str(out), "--task", "denoise", "--quiet"], {"RESTORER_HOME": str(tmp_path / "home")},
                 stdout=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("p*.png")):
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    lines = err.splitlines()
    assert len([line for line in lines if says in line]) == 1 and "Traceback" not in err, err
    written = sorted(out.glob("p*.png"))
    assert 1 <= len(written) < 40, "stopped midway"
    for p in written:  # every file there is whole
        with Image.open(p) as image:
            image.load()
            assert image.size == (256, 256)
    assert not leftovers(tmp_path)
    assert snapshot(src) == before


def test_summary_json_is_still_complete_when_read(tmp_path):
    """The report a reader does read is whole JSON (the pipe handling changes nothing else)."""
    f = photo(tmp_path / "in" / "p.png")
    r = subprocess.run([sys.executable, "-m", "restorer.cli", str(f), "-o", str(tmp_path / "out"), "--task",
                        "denoise", "--json"], capture_output=True, text=True,
                       env={**os.environ, "RESTORER_HOME": str(tmp_path / "home")})
    assert r.returncode == 0 and json.loads(r.stdout)["summary"] == {"done": 1}


def test_corpus_helpers_make_what_they_say(tmp_path):
    """The zip bomb is a real one: small on disk, gigantic inflated."""
    (tmp_path / "in").mkdir()
    f = zip_with(tmp_path / "in" / "bomb.zip", "weights/net.pth", bytes(20 << 20))
    info = zipfile.ZipFile(f).infolist()[0]
    assert f.stat().st_size < 100_000 and info.file_size == 20 << 20
    liar = declare_size(zip_with(tmp_path / "liar.zip", "a.pth", os.urandom(4096)), 1000)
    with pytest.raises((zipfile.BadZipFile, zlib.error)):
        zipfile.ZipFile(liar).read("a.pth")


def test_cli_minimum_tile_is_the_engines():
    from restorer.run.tiles import MIN_TILE

    assert cli.MIN_TILE == MIN_TILE
