"""Weights read without torch: PyTorch's zip and legacy formats through the restricted
unpickler (restorer.zoo.torchfile), safetensors memory-mapped; malicious pickles refused with
nothing run; `models add` recognising checkpoints in a process where torch cannot be imported
(the shipped layouts table); the sha256 tie-break between entries sharing a layout."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from restorer.zoo import install, recognise, torchfile
from restorer.zoo import weights as store_weights
from restorer.zoo.layout import StoreError
from tests.store_helpers import (
    HAT_TINY, manifest_entries, tiny_hat_entry, use_catalog, write_pth, write_sparse_safetensors,
)

REPO = Path(__file__).resolve().parents[1]
MAMBAIR_LIGHT = "mambair/MambaIR_lightSR_x2.keys.json"  # catalog id mambair-light-x2, 0.9 M parameters


@pytest.fixture(autouse=True)
def store_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RESTORER_HOME", str(home))
    monkeypatch.delenv("RESTORER_MIRROR", raising=False)
    return home


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_memory_mapped(array: np.ndarray) -> bool:
    """A view (at some remove: as_strided wraps its base) of a memory-mapped file."""
    obj = array
    while obj is not None:
        if isinstance(obj, np.memmap):
            return True
        obj = getattr(obj, "base", None)
    return False


# ---------------------------------------------------------------- (a) values as torch.load reads them


def released_like_checkpoint():
    """A checkpoint laid out like the MambaIR-light x2 release (names, shapes, dtypes of its
    manifest; random values) under "params_ema", plus the awkward cases: float16, bfloat16,
    int64, a 0-d tensor, an empty one, a transposed (non-contiguous) view, a view sharing
    its storage at an offset, a Parameter and a module's state_dict (OrderedDict with
    _metadata)."""
    import torch

    g = torch.Generator().manual_seed(0)
    dtypes = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}
    tensors = {}
    for name, shape, dtype in manifest_entries(MAMBAIR_LIGHT):
        if dtype == "int64":
            tensors[name] = torch.randint(0, 1000, shape, generator=g, dtype=torch.int64)
        else:
            tensors[name] = torch.randn(shape, generator=g).to(dtypes[dtype])
    base = torch.randn(6, 8, generator=g)
    tensors.update({
        "extra.half": torch.randn(3, 5, generator=g).half(),
        "extra.bf16": torch.randn(4, 3, generator=g).bfloat16(),
        "extra.long": torch.arange(-5, 5, dtype=torch.int64),
        "extra.scalar": torch.tensor(2.5),
        "extra.empty": torch.zeros(0, 3),
        "extra.bool": torch.tensor([True, False, True]),
        "extra.base": base,
        "extra.transposed": base.t(),  # strides (1, 8)
        "extra.window": base[2:5, 3:7],  # shares base's storage at offset 19
        "extra.parameter": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
    })
    return {"params_ema": tensors, "iter": 500000, "net": torch.nn.Conv2d(2, 3, 3).state_dict()}


def _expected(t) -> np.ndarray:
    import torch

    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pytorch_files_read_without_torch_equal_torch_load(legacy, tmp_path):
    import torch

    path = tmp_path / "MambaIR_light2.pth"
    torch.save(released_like_checkpoint(), path, _use_new_zipfile_serialization=not legacy)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    got = torchfile.load(path)
    assert got["iter"] == 500000
    for group in ("params_ema", "net"):
        assert list(got[group]) == list(reference[group])
        for name, tensor in reference[group].items():
            want, have = _expected(tensor), got[group][name]
            assert isinstance(have, np.ndarray), name
            assert have.dtype == want.dtype and have.shape == want.shape, name
            assert np.array_equal(have, want), name
    # the storage is shared, not copied: the window is a view of the same bytes as its base
    assert np.shares_memory(got["params_ema"]["extra.window"], got["params_ema"]["extra.base"])
    assert _is_memory_mapped(got["params_ema"]["extra.base"])

    tensors = store_weights.load_state_dict(path)  # params_ema opened, non-tensors dropped
    assert set(tensors) == set(reference["params_ema"])
    assert np.array_equal(tensors["extra.transposed"], reference["params_ema"]["extra.transposed"].numpy())
    assert store_weights.tensor_shapes(path)["extra.window"] == (3, 4)


def test_safetensors_memory_mapped_and_bf16_widened(tmp_path):
    import torch
    from safetensors.torch import save_file

    reference = {"a": torch.randn(3, 4), "b": torch.randn(5).bfloat16(), "c": torch.arange(6).reshape(2, 3),
                 "d": torch.zeros(0), "e": torch.randn(2).half()}
    path = tmp_path / "w.safetensors"
    save_file(reference, path)
    got = store_weights.load_state_dict(path)
    for name, tensor in reference.items():
        assert got[name].dtype == _expected(tensor).dtype and np.array_equal(got[name], _expected(tensor)), name
    assert _is_memory_mapped(got["a"]) and got["a"].flags.writeable
    got["a"][...] = 0  # copy-on-write: the file is never changed
    assert np.array_equal(store_weights.load_state_dict(path)["a"], reference["a"].numpy())


def test_a_model_loads_from_numpy_weights(tmp_path, monkeypatch):
    """restorer.run.torch.load_module turns the reader's arrays into the module's tensors."""
    from restorer.run.torch import load_module

    cat = use_catalog(monkeypatch, tiny_hat_entry("tiny-a", files=[{"name": "tiny-a.pth"}]))
    spec = cat.get("tiny-a")
    weights = store_weights.load_state_dict(HAT_TINY / "hat_tiny_x2.safetensors")
    import torch

    target = install.model_dir(spec) / "tiny-a.pth"
    target.parent.mkdir(parents=True)
    torch.save({"params_ema": {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}}, target,
               _use_new_zipfile_serialization=False)  # legacy: storages at unaligned offsets
    module = load_module(spec)
    for name, value in module.state_dict().items():
        assert np.array_equal(value.numpy(), weights[name]), name


# ---------------------------------------------------------------- (b) malicious pickles


class Shell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class Eval:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def _craft_zip(path: Path, payload) -> Path:
    """A torch-style zip whose data.pkl is `payload` pickled by plain pickle (protocol 2)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
        z.writestr("archive/version", "3\n")
    return path


def _attempts(path: Path):
    return (lambda: torchfile.load(path), lambda: store_weights.load_state_dict(path),
            lambda: store_weights.tensor_shapes(path), lambda: recognise.recognise(path),
            lambda: install.add(path))


@pytest.mark.parametrize("how", ["torch.save", "torch.save legacy", "crafted zip", "raw pickle"])
@pytest.mark.parametrize("call", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused_and_nothing_runs(how, call, tmp_path):
    import torch

    pwned = tmp_path / "pwned"
    command = f"touch {pwned}"
    payload = Shell(command) if call == "os.system" else Eval(f"__import__('os').system({command!r})")
    checkpoint = {"params": {"w": torch.zeros(2)}, "x": payload}
    path = tmp_path / "evil.pth"
    if how.startswith("torch.save"):
        torch.save(checkpoint, path, _use_new_zipfile_serialization=how == "torch.save")
    elif how == "crafted zip":
        _craft_zip(path, {"x": payload})
    else:
        path.write_bytes(pickle.dumps({"x": payload}))
    named = r"(posix|nt|os)\.system" if call == "os.system" else r"builtins\.eval"
    for attempt in _attempts(path):
        with pytest.raises(StoreError, match=rf"^evil\.pth: refusing to load it: its pickle calls {named};") as info:
            attempt()
        assert "\n" not in str(info.value)
    assert not pwned.exists()


def test_other_globals_and_abuse_of_the_allowed_ones_are_refused(tmp_path):
    import torch

    class Global:
        """Pickles as a call of an arbitrary global (module, name)."""

        def __init__(self, module, name):
            self.module, self.name = module, name

        def __reduce__(self):
            return (Global._find(self.module, self.name), ())

        @staticmethod
        def _find(module, name):
            import importlib

            obj = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
            return obj

    # tensor-looking globals that are not on the list
    for module, name in [("torch.serialization", "load"), ("torch._utils", "_rebuild_device_tensor_from_numpy"),
                         ("numpy", "load"), ("subprocess", "Popen")]:
        path = _craft_zip(tmp_path / "g.pth", {"x": Global(module, name)})
        with pytest.raises(StoreError, match=rf"^g\.pth: refusing to load it: its pickle calls {module}\.{name};"):
            torchfile.load(path)

    # an allowed global called as something it is not: a storage type is no function
    path = _craft_zip(tmp_path / "s.pth", {"x": Global("torch", "FloatStorage")})
    with pytest.raises(StoreError, match=r"^s\.pth: refusing to load it: its pickle holds more than tensors") as info:
        torchfile.load(path)
    assert "\n" not in str(info.value)

    # BUILD (pickle's __setstate__ path) on a stand-in: rewriting FloatStorage's dtype would
    # misread every later file, or make numpy reinterpret bytes as object pointers
    for state in (b"}X\x05\x00\x00\x00dtypeX\x01\x00\x00\x00Os", b"N}X\x05\x00\x00\x00dtypeX\x01\x00\x00\x00Os\x86"):
        for target in (b"ctorch\nFloatStorage\n", b"ctorch._utils\n_rebuild_tensor_v2\n"):
            path = tmp_path / "build.pth"
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("archive/data.pkl", b"\x80\x02" + target + state + b"b.")
            with pytest.raises(StoreError, match=r"^build\.pth: refusing to load it: its pickle holds more than tensors"):
                torchfile.load(path)
    assert torchfile.ALLOWED[("torch", "FloatStorage")].dtype == "float32"

    # a tensor record reaching past its storage (a read out of bounds if it were trusted)
    class Overreach:
        def __init__(self, t):
            self.t = t

        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (self.t.storage(), 0, (4,), (1000,), False, OrderedDict()))

    path = tmp_path / "far.pth"
    with pytest.warns(UserWarning):  # TypedStorage is deprecated
        torch.save({"w": Overreach(torch.zeros(4))}, path)
    with pytest.raises(StoreError, match=r"^far\.pth: not a readable PyTorch checkpoint: a tensor reaches past"):
        torchfile.load(path)

    # not a checkpoint at all
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(StoreError, match=r"^junk\.pth: not a readable PyTorch checkpoint") as info:
        store_weights.load_state_dict(junk)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- (c) no torch at all

NO_TORCH = ("import sys; sys.modules['torch'] = None\n"
            "from restorer.cli import main\n"
            "code = main(sys.argv[1:])\n"
            "assert not [m for m in sys.modules if m.startswith('torch') and sys.modules[m] is not None]\n"
            "sys.exit(code)\n")


def cli_without_torch(home: Path, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESTORER_HOME=str(home))
    env.pop("RESTORER_MIRROR", None)
    return subprocess.run([sys.executable, "-c", NO_TORCH, *argv], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300, check=False)


def test_models_add_without_torch(tmp_path, store_home):
    import torch  # only to write the files: the CLI runs in a process where torch cannot be imported

    # a released layout against the real catalog: the shipped layouts table recognises it
    release = tmp_path / "release"
    entries = manifest_entries(MAMBAIR_LIGHT)
    write_sparse_safetensors(release / "MambaIR_light2.safetensors", entries)
    write_pth(release / "MambaIR_light2.pth", entries, "params")
    for name in ("MambaIR_light2.safetensors", "MambaIR_light2.pth"):
        r = cli_without_torch(store_home, "models", "add", str(release / name))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("installed mambair-light-x2: "), r.stdout
    broken = tmp_path / "broken" / "MambaIR_light2.safetensors"
    bad = write_sparse_safetensors(broken, entries, broken="first")
    r = cli_without_torch(store_home, "models", "add", str(broken))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "closest is 'mambair-light-x2'" in r.stderr and f"tensor {bad}: expected shape" in r.stderr

    # a tiny HAT registered in the user's catalog: its layout is not shipped, so without torch
    # the catalog's sha256 identifies the file
    tiny = {k: torch.from_numpy(np.array(v)) for k, v in
            store_weights.load_state_dict(HAT_TINY / "hat_tiny_x2.safetensors").items()}
    files = {"tiny-zip.pth": tmp_path / "a" / "download.pth", "tiny-legacy.pth": tmp_path / "b" / "download.pth",
             "tiny.safetensors": tmp_path / "c" / "download.safetensors"}
    for path in files.values():
        path.parent.mkdir()
    torch.save({"params_ema": tiny}, files["tiny-zip.pth"])
    torch.save({"params_ema": tiny}, files["tiny-legacy.pth"], _use_new_zipfile_serialization=False)
    files["tiny.safetensors"].write_bytes((HAT_TINY / "hat_tiny_x2.safetensors").read_bytes())
    user_catalog = "".join(tiny_hat_entry(f"user-{i}", files=[{"name": name, "sha256": sha(path)}])
                           for i, (name, path) in enumerate(files.items()))
    user_catalog += tiny_hat_entry("user-nohash", files=[{"name": "nohash.pth"}])
    store_home.mkdir(parents=True, exist_ok=True)
    (store_home / "catalog.toml").write_text(user_catalog)
    for i, (name, path) in enumerate(files.items()):
        r = cli_without_torch(store_home, "models", "add", str(path))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"installed user-{i}: "), r.stdout
        assert (store_home / "models" / f"user-{i}" / name).is_file()
    r = cli_without_torch(store_home, "models", "add", str(tmp_path / "mine.pth"), "--id", "user-nohash")
    assert r.returncode == 2  # no such file
    other = tmp_path / "mine.safetensors"
    write_sparse_safetensors(other, [[k, list(v.shape), "float32"] for k, v in tiny.items()])
    r = cli_without_torch(store_home, "models", "add", str(other), "--id", "user-nohash")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "cannot check it against 'user-nohash' here" in r.stderr and "PyTorch" in r.stderr


# ---------------------------------------------------------------- the shipped layouts table


def test_layouts_table_is_current():
    """restorer/data/layouts.json.gz holds a layout for every recognisable catalog entry, and
    those layouts are what the architectures build (a deterministic sample of 10, built on
    the meta device; `python tools/make_layouts.py --check` compares them all)."""
    sys.path.insert(0, str(REPO / "tools"))
    import make_layouts

    from restorer.archs import tensor_layout

    specs = make_layouts.catalog_specs()
    table = recognise.shipped_layouts()
    by_key = {recognise.layout_key(s.arch, s.hparams): s for s in specs}
    assert set(table) == set(by_key), "stale: run python tools/make_layouts.py"
    keys = sorted(by_key)
    for key in keys[:: max(1, len(keys) // 10)][:10]:
        spec = by_key[key]
        built = tensor_layout(spec.arch, json.dumps(spec.hparams, sort_keys=True))
        assert [[k, list(v)] for k, v in built.items()] == table[key], f"{spec.id}: stale: run python tools/make_layouts.py"


def test_signature_reads_the_table_before_building(monkeypatch):
    from restorer.zoo.catalog import load_catalog

    def no_build(*args):
        raise AssertionError("built a module for a layout the table holds")

    monkeypatch.setattr(recognise, "tensor_layout", no_build)
    spec = load_catalog().get("mambair-light-x2")
    assert recognise.signature(spec) == {name: tuple(shape) for name, shape, _ in manifest_entries(MAMBAIR_LIGHT)}


# ---------------------------------------------------------------- (d) the sha256 tie-break


def test_shared_layout_is_told_apart_by_sha256_then_name(tmp_path, monkeypatch):
    data = (HAT_TINY / "hat_tiny_x2.safetensors").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    use_catalog(monkeypatch, tiny_hat_entry("hat-x", files=[{"name": "HAT_SRx4.pth"}])
                + tiny_hat_entry("hat-x-imagenet", files=[{"name": "HAT_SRx4_ImageNet-pretrain.pth", "sha256": digest}]))
    # renamed, but the hash is the catalog's: that entry, whatever the name says
    for name in ("download (1).safetensors", "HAT_SRx4.safetensors"):
        path = tmp_path / name
        path.write_bytes(data)
        assert [m.spec.id for m in recognise.recognise(path)] == ["hat-x-imagenet"]
    result = install.add(tmp_path / "download (1).safetensors")
    assert result.installed[0][0] == "hat-x-imagenet"
    assert result.installed[0][1].name == "HAT_SRx4_ImageNet-pretrain.pth"

    # another file of the same layout: the official name decides, else --id is asked for
    entries = [[k, list(v.shape), "float32"] for k, v in store_weights.load_state_dict(tmp_path / "HAT_SRx4.safetensors").items()]
    named = tmp_path / "other" / "HAT_SRx4.pth"
    write_sparse_safetensors(named, entries)
    assert [m.spec.id for m in recognise.recognise(named)] == ["hat-x"]
    anonymous = tmp_path / "other" / "weights.pth"
    write_sparse_safetensors(anonymous, entries)
    assert sorted(m.spec.id for m in recognise.recognise(anonymous)) == ["hat-x", "hat-x-imagenet"]
    with pytest.raises(StoreError, match=r"fits several catalog models \(hat-x, hat-x-imagenet\); say which with --id"):
        install.add(anonymous)


def test_a_key_prefix_keeps_the_network_and_drops_the_rest(tmp_path):
    """RestoreFormer's Lightning checkpoints: the network under 'state_dict' with a 'vqvae.'
    prefix, beside training-loss tensors that are not the network."""
    torch = pytest.importorskip("torch")
    from restorer.zoo.catalog import parse

    path = tmp_path / "RestoreFormer.ckpt"
    torch.save({"state_dict": {"vqvae.encoder.conv_in.weight": torch.ones(4, 3, 3, 3),
                               "vqvae.quantize.embedding.weight": torch.zeros(8, 4),
                               "loss.discriminator.main.0.weight": torch.zeros(2, 3, 4, 4)},
                "epoch": 3}, path)
    spec = parse('[[model]]\nid = "rf"\ntitle = "t"\nfamily = "restoreformer"\ntasks = ["faces"]\n'
                 'arch = "RestoreFormer"\nwrapper_key = "state_dict"\nkey_prefix = "vqvae."\n').get("rf")
    tensors = store_weights.load_state_dict(path, spec)
    assert sorted(tensors) == ["encoder.conv_in.weight", "quantize.embedding.weight"]
    assert tensors["encoder.conv_in.weight"].shape == (4, 3, 3, 3) and tensors["encoder.conv_in.weight"].max() == 1
    assert store_weights.tensor_shapes(path, "state_dict", "vqvae.") == {"encoder.conv_in.weight": (4, 3, 3, 3),
                                                                        "quantize.embedding.weight": (8, 4)}
