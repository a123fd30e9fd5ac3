"""Every family restores an image smaller than the smallest input its network accepts: the
tiling engine pads it up to what the family's Requirements declare (restorer.archs.ARCHS
`min_size`, merged with the checkpoint's pad_multiple by the catalog) and crops back.

Each tiny golden-fixture network (its fixture weights) runs through a TorchRunner and
`run_tiled` on a 48x40 and a 1x1 image; the Requirements come from the family's real catalog
entry with the fixture's own hyperparameters, scale and window-size padding swapped in, and
the entry's own tile_multiple / min_size cleared so that only the architecture's declaration
speaks. The released hyperparameters are checked on the meta device (shapes only) at the
declared minimum.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from restorer.archs import ARCHS, build
from restorer.archs.requirements import Requirements
from restorer.run.runner import RunnerInfo
from restorer.run.tiles import run_tiled
from restorer.run.torch import TorchRunner
from restorer.zoo.catalog import parse
from tests.manifests import FIXTURES, load_safetensors

CATALOG_TOML = Path(__file__).resolve().parents[1] / "models" / "catalog.toml"
SIZES = [(48, 40), (1, 1)]

# as tests/test_arch_instructir.py (the fixture has no .json)
INSTRUCTIR_TINY = {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 2, 1],
                   "dec_blk_nums": [1, 1, 1], "txtdim": 32}


@cache
def catalog():
    return parse(CATALOG_TOML.read_text(encoding="utf-8"))


@dataclasses.dataclass(frozen=True)
class Case:
    arch: str
    entry: str  # the real catalog entry whose facts (value range, channels, padding) apply
    fixture: str  # tests/fixtures/<fixture>.safetensors (and .json, unless hparams are given)
    min_side: int  # the smallest side the merged Requirements must ask for
    hparams: dict | None = None  # when the fixture has no .json
    window_pad: bool = False  # the catalog pads to window_size: use the fixture's window
    channels: int = 3
    extra: Callable[[int, int, np.random.Generator], dict] | None = None  # extra network inputs for an HxW image
    wrap: Callable[[nn.Module], nn.Module] | None = None


class FirstHead(nn.Module):
    """GCENetMHLocal returns (N, heads, C, H, W); a pipeline picks one head."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


def _embedding(h, w, rng):
    e = rng.standard_normal((1, INSTRUCTIR_TINY["txtdim"])).astype(np.float32)
    return {"embedding": e / np.linalg.norm(e)}


def _mask(h, w, rng):
    return {"mask": (rng.random((h, w, 1)) > 0.5).astype(np.float32)}


CASES = {
    "hat_x2": Case("HAT", "hat-x2", "hat/tiny/hat_tiny_x2", 4, window_pad=True),
    "mambair_x3": Case("MambaIR", "mambair-light-x3", "mambair/mambair_tiny_lightsr_x3", 1),
    "mambairv2_x2": Case("MambaIRv2", "mambairv2-sr-small-x2", "mambair/mambairv2_tiny_sr_x2", 4, window_pad=True),
    "mambairv2light_x3": Case("MambaIRv2Light", "mambairv2-light-x3", "mambair/mambairv2light_tiny_x3", 4,
                              window_pad=True),
    "cgnet": Case("CascadedGaze", "cgnet-sidd", "cgnet/cgnet_tiny", 64),
    "cgnet_mh": Case("GCENetMHLocal", "cgnet-gopro-mh", "cgnet/cgnet_mh_tiny", 64, wrap=FirstHead),
    "mirnet": Case("MIRNet", "mirnet-denoise-sidd", "mirnet/mirnet_v1_tiny", 4),
    "mirnet_v2": Case("MIRNet_v2", "mirnetv2-denoise-real", "mirnet/v2/mirnetv2_tiny", 4),
    "instructir": Case("InstructIR", "instructir-7d", "instructir/instructir_tiny", 1, hparams=INSTRUCTIR_TINY,
                       extra=_embedding),
    "garnet": Case("GaRNet", "garnet", "garnet/garnet_tiny", 32, hparams={"in_channels": 3, "ndf": 8}, extra=_mask),
    "scratch": Case("OldPhotoScratchUNet", "oldphoto-scratch-detector", "oldphoto/scratch_detector_tiny", 32,
                    channels=1),
}  # fmt: skip


def hyperparameters(case: Case) -> dict:
    if case.hparams is not None:
        return dict(case.hparams)
    meta = json.loads((FIXTURES / case.fixture).with_suffix(".json").read_text())
    return dict(meta.get("hyperparameters") or meta["config"])


def requirements(case: Case, hp: dict) -> Requirements:
    """The catalog's merge (ARCHS needs + checkpoint facts) for the tiny network."""
    spec = catalog().get(case.entry)
    changes = {"arch": case.arch, "hparams": hp, "scale": hp.get("upscale", 1), "min_size": None, "tile_multiple": None}
    if case.window_pad:
        changes["pad_multiple"] = hp["window_size"]
    return dataclasses.replace(spec, **changes).requirements


@cache
def network(key: str) -> tuple[nn.Module, Requirements]:
    case = CASES[key]
    hp = hyperparameters(case)
    net = build(case.arch, hp).eval()
    weights = load_safetensors((FIXTURES / case.fixture).with_suffix(".safetensors"))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    if case.wrap is not None:
        net = case.wrap(net).eval()
    return net, requirements(case, hp)


class TileRecorder:
    """Wraps a runner; records the size of every batch it is given."""

    def __init__(self, inner, shapes: list):
        self.inner, self.shapes = inner, shapes

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, batch, **extra):
        self.shapes.append(tuple(batch.shape[2:]))
        return self.inner(batch, **extra)


def runner(key: str, needs: Requirements | None = None) -> TorchRunner:
    net, declared = network(key)
    return TorchRunner(net, RunnerInfo(f"tiny:{key}", "", ""), needs or declared, device="cpu")


def restore(key: str, height: int, width: int, needs: Requirements | None = None, recorder=None) -> np.ndarray:
    case = CASES[key]
    rng = np.random.default_rng(0)
    pixels = rng.random((height, width, case.channels), dtype=np.float32)
    extra = case.extra(height, width, rng) if case.extra else None
    run = runner(key, needs)
    return run_tiled(pixels, recorder(run) if recorder else run, extra=extra)


@pytest.mark.parametrize("key", list(CASES))
def test_declared_minimum(key):
    """The merged Requirements ask for the minimum derived for the architecture."""
    case = CASES[key]
    _, needs = network(key)
    assert needs.min_side == case.min_side
    assert needs.min_size == ARCHS[case.arch].needs.get("min_size", 1)


@pytest.mark.parametrize("height,width", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("key", list(CASES))
def test_restores_smaller_than_minimum(key, height, width):
    _, needs = network(key)
    tiles = []
    out = restore(key, height, width, recorder=lambda run: TileRecorder(run, tiles))
    assert out.shape == (height * needs.scale, width * needs.scale, CASES[key].channels)
    assert np.isfinite(out).all()
    # the network saw the image padded up to the declared minimum, never less
    assert tiles and all(min(t) >= needs.min_side for t in tiles)
    if (height, width) == (1, 1):
        assert tiles == [(needs.min_side, needs.min_side)]


def test_cgnet_fails_without_declared_minimum():
    """The declaration matters: at 48x40 (padded to 48x48 for tile_multiple 16) CGNet's
    level-1 GCE cascade is left with a 3x3 map for its 5x5 kernel."""
    _, needs = network("cgnet")
    with pytest.raises(RuntimeError, match="Kernel size"):
        restore("cgnet", 48, 40, needs.with_(min_size=1))


def test_scratch_detector_fails_at_its_pad_multiple():
    """pad_multiple 16 alone is not enough: at 16 px the 1/16 map is 1 px and cannot be
    reflect-padded."""
    _, needs = network("scratch")
    assert needs.pad_multiple == 16
    with pytest.raises(RuntimeError, match="[Pp]adding size"):
        restore("scratch", 16, 16, needs.with_(min_size=1))


# ---- the released hyperparameters, shapes only (meta device) ----
# The tiny fixtures differ from the releases in widths and depths (and window sizes, which the
# pad multiple follows), which do not change the minimum; these check the configurations no fixture has: the Gaussian CGNet's own GCE table,
# MambaIR's real-denoising U-Net, and the released SIDD CGNet and scratch detector.

CGNET = ("CascadedGaze", "GCENetMHLocal", "CascadedGazeNetBiggerLocal")
RELEASED = ["cgnet-sidd", "cgnet-gaussian-sigma15", "mambair-realdn", "oldphoto-scratch-detector"]


def _accepts(net: nn.Module, channels: int, side: int) -> bool:
    try:
        with torch.device("meta"), torch.no_grad():
            out = net(torch.empty(1, channels, side, side))
    except RuntimeError:
        return False
    assert out.shape[-2:] == (side, side)
    return True


@pytest.mark.slow
@pytest.mark.parametrize("model_id", RELEASED)
def test_released_hyperparameters_need_the_declared_minimum(model_id):
    """The released network runs at the declared minimum side; where that minimum is more
    than one padding step, one step (of the tile / pad multiple) less fails."""
    spec = catalog().get(model_id)
    spec = dataclasses.replace(spec, min_size=None, tile_multiple=None)  # the architecture's declaration only
    needs = spec.requirements
    with torch.device("meta"):
        net = build(spec.arch, spec.hparams).eval()
    assert _accepts(net, spec.channels, needs.min_side)
    below = needs.min_side - max(needs.pad_multiple, needs.tile_multiple)
    if below > 0:
        assert not _accepts(net, spec.channels, below)
    if spec.arch in CGNET:  # the module's own derivation from its GCE cascades agrees
        assert net.min_size == needs.min_size
