"""Tiled vs whole-image inference of the tiny golden-fixture networks: shared by
tests/test_seams.py and bench/seams.py.

Measures, all on the raw (unclamped) network output, each also divided by the output's
dynamic range (max - min of the whole-image output; random-weight models do not map to
[0, 1], so an absolute figure alone would say nothing):
- max / mean |tiled - whole|;
- seam step: the difference image d = mean over channels of (tiled - whole) is
  differentiated across x (and y); the mean |gradient| over the columns (rows) where the
  tile weights change (the blend ramps, one pixel either side) minus the mean |gradient|
  elsewhere. A seam is a step in d exactly there; tiles that merely disagree smoothly give
  no excess. `seam_ratio` is the same as a ratio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.manifests import FIXTURES, load_safetensors

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@dataclass(frozen=True)
class TinyModel:
    key: str
    fixture: str  # path under tests/fixtures without suffix
    arch: str
    pad_multiple: int
    tile: int  # the tile the studies use (input pixels)
    tile_multiple: int = 1  # as restorer.archs.ARCHS declares them for the family
    min_size: int = 1


TINY = {
    "hat_x2": TinyModel("hat_x2", "hat/tiny/hat_tiny_x2", "HAT", 4, 64),
    "cgnet": TinyModel("cgnet", "cgnet/cgnet_tiny", "CascadedGaze", 1, 272, tile_multiple=16, min_size=64),
    "mirnet_v1": TinyModel("mirnet_v1", "mirnet/mirnet_v1_tiny", "MIRNet", 4, 64),
    "mambair_x2": TinyModel("mambair_x2", "mambair/mambair_tiny_sr_x2", "MambaIR", 1, 40),
    "mambairv2_x2": TinyModel("mambairv2_x2", "mambair/mambairv2_tiny_sr_x2", "MambaIRv2", 4, 64),
}  # fmt: skip


def fixture_base(model: TinyModel, extra_dirs: tuple[Path, ...] = ()) -> Path | None:
    """Where the fixture lives: tests/fixtures first, then any extra folder (bench only)."""
    name = Path(model.fixture).name
    for base in (FIXTURES / model.fixture, FIXTURES / Path(model.fixture).parent / "tiny" / name,
                 *(d / name for d in extra_dirs)):
        if base.with_suffix(".safetensors").is_file():
            return base
    return None


def load(model: TinyModel, base: Path):
    """The torch module with the fixture weights, its golden input and output."""
    import torch

    from restorer.archs import build

    meta = json.loads(base.with_suffix(".json").read_text())
    net = build(model.arch, meta["hyperparameters"]).eval()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in load_safetensors(base.with_suffix(".safetensors")).items()})
    return net, np.load(base.with_suffix(".input.npy")), np.load(base.with_suffix(".output.npy")), meta


def make_runner(model: TinyModel, net, scale: int, overlap: int):
    from restorer.archs import ARCHS
    from restorer.archs.requirements import Requirements
    from restorer.run.runner import RunnerInfo
    from restorer.run.torch import TorchRunner

    family = {k: v for k, v in ARCHS[model.arch].needs.items() if k != "bytes_per_pixel"}
    needs = Requirements(**{**family, "scale": scale, "pad_multiple": model.pad_multiple, "overlap": overlap,
                            "tile_multiple": model.tile_multiple, "min_size": model.min_size})
    return TorchRunner(net, RunnerInfo(f"tiny:{model.key}", "", ""), needs, device="cpu")


def sample_image(height: int, width: int, name: str = "kodim05_crop256.png", resize_width: int | None = None) -> np.ndarray:
    """A real photo from samples/: area-resized to `resize_width` wide (when given), then
    the centre `height` x `width` crop."""
    from PIL import Image

    img = Image.open(SAMPLES / name).convert("RGB")
    if resize_width:
        img = img.resize((resize_width, round(img.height * resize_width / img.width)), Image.Resampling.BOX)
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    top, left = (rgb.shape[0] - height) // 2, (rgb.shape[1] - width) // 2
    return np.ascontiguousarray(rgb[top : top + height, left : left + width])


class TileRecorder:
    """Wraps a runner; remembers the size of every tile it was given."""

    def __init__(self, runner):
        self.inner, self.shapes = runner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, batch, **extra):
        self.shapes.append(batch.shape[2:])
        return self.inner(batch, **extra)


def blend_zones(length: int, tile: int, overlap: int, scale: int) -> np.ndarray:
    """Boolean mask over the `length*scale - 1` gaps between output pixels along one axis:
    True where a tile's weight ramps (rise or fall), one pixel either side included."""
    from restorer.run.tiles import axis_starts

    ramp = max(overlap, 1)
    mask = np.zeros(length * scale - 1, bool)
    for start in axis_starts(length, tile, overlap, ramp):
        stop = min(start + tile, length)
        if start > 0:
            lo, hi = (start + overlap) * scale, (start + overlap + ramp) * scale
            mask[max(lo - 2, 0) : hi + 1] = True
        if stop < length:
            lo, hi = (stop - overlap - ramp) * scale, (stop - overlap) * scale
            mask[max(lo - 2, 0) : hi + 1] = True
    return mask


def compare(whole: np.ndarray, tiled: np.ndarray, tile: int | tuple[int, int], overlap: int, scale: int) -> dict:
    """The measures of the module docstring, for HxWxC outputs; `tile` is a side or the
    (height, width) of the tiles the engine used."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    span = float(whole.max() - whole.min())
    diff = tiled - whole
    d = diff.mean(axis=2)
    h, w = d.shape[0] // scale, d.shape[1] // scale
    gx, gy = np.abs(np.diff(d, axis=1)), np.abs(np.diff(d, axis=0))
    zx = np.broadcast_to(blend_zones(w, tw, overlap, scale)[None, :], gx.shape)
    zy = np.broadcast_to(blend_zones(h, th, overlap, scale)[:, None], gy.shape)
    at = np.concatenate([gx[zx], gy[zy]])
    off = np.concatenate([gx[~zx], gy[~zy]])
    at_mean = float(at.mean()) if at.size else 0.0
    off_mean = float(off.mean()) if off.size else 0.0
    return {
        "max": float(np.abs(diff).max()),
        "mean": float(np.abs(diff).mean()),
        "range": span,
        "max_rel": float(np.abs(diff).max()) / span,
        "mean_rel": float(np.abs(diff).mean()) / span,
        "seam_step_rel": (at_mean - off_mean) / span,
        "seam_ratio": at_mean / max(off_mean, 1e-12),
    }


def study(model: TinyModel, net, scale: int, image: np.ndarray, overlap: int) -> dict:
    """Whole vs tiled at one overlap; the tile the engine really used is recorded."""
    from restorer.run.tiles import run_runner, run_tiled

    runner = make_runner(model, net, scale, overlap)
    whole = run_runner(runner, image)
    recorder = TileRecorder(runner)
    tiled = run_tiled(image, recorder, tile=model.tile, overlap=overlap)
    used = tuple(max(s[i] for s in recorder.shapes) for i in (0, 1))  # (height, width): fitted per axis
    result = compare(whole, tiled, used, overlap, scale)
    result.update(tile=used, tiles=len(recorder.shapes))
    return result
