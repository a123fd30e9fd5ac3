"""MambaIR v1 (restorer.archs.mambair) and the chunked selective scan.

- Every released, complete v1 checkpoint manifest loads strictly (names and shapes, built on
  the meta device); the parameter count equals the manifest's.
- Each tiny v1 fixture (random weights, golden output from the official code) matches in
  PyTorch and in ONNX Runtime, run through the official test procedure (MambaIRModel.test:
  one piece under 200 px, else overlapping pieces); the 203x205 denoising fixture takes the
  partition path.
- The chunked scan equals the sequential recurrence (float64 to 1e-10; float32, eager and in
  ONNX Runtime, within a bound derived from float32 roundoff, see float32_bound) on long
  sequences with strongly decaying and near-zero-decay channels; its ONNX graph is one Scan
  node whose size does not grow with the sequence length.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from restorer.archs.mambair import MambaIR, MambaIRUNet
from restorer.archs.selective_scan import selective_scan, selective_scan_reference
from restorer.convert.graph import export_onnx, run_onnx
from tests.manifests import FIXTURES, assert_loads_strictly, load_safetensors

FIX = FIXTURES / "mambair"
TINY = ["mambair_tiny_car_gray", "mambair_tiny_dn", "mambair_tiny_lightsr_x3", "mambair_tiny_sr_x2"]
TOLERANCE = 1e-4  # the fixtures' suggested bar (their float64 re-run differs by <= 6e-6)
# MambaIR_realSR is released but its architecture is unknown (no option file): no manifest.
V1_MANIFESTS = [
    *(f"MambaIR_SR_x{s}.keys.json" for s in (2, 3, 4)),
    *(f"MambaIR_lightSR_x{s}.keys.json" for s in (2, 3, 4)),
    *(f"ColorDN_MambaIR_level{s}.keys.json" for s in (15, 25, 50)),
    *(f"MambaIR_CAR_q{q}.keys.json" for q in (10, 30, 40)),
    "RealDN_MambaIR.keys.json",
]


def tiny(name: str, **extra) -> tuple[MambaIR, dict]:
    meta = json.loads((FIX / f"{name}.json").read_text())
    model = MambaIR(**meta["hyperparameters"], **extra).eval()
    weights = load_safetensors(FIX / f"{name}.safetensors")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return model, meta


def official_test(forward, image: np.ndarray, scale: int) -> np.ndarray:
    """MambaIRModel.test(): n = size // 200 + 1 pieces per axis after reflect-padding the
    bottom/right to a multiple of n; each piece reaches shave = piece // 10 pixels into its
    inner neighbours; the piece's own block is copied out (no blending); padding cropped."""
    _, c, h, w = image.shape
    n_h, n_w = h // 200 + 1, w // 200 + 1
    pad_h, pad_w = (-h) % n_h, (-w) % n_w
    img = np.pad(image, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
    sh, sw = img.shape[2] // n_h, img.shape[3] // n_w
    shave_h, shave_w = sh // 10, sw // 10
    out = np.zeros((1, c, img.shape[2] * scale, img.shape[3] * scale), np.float32)
    for i in range(n_h):
        top = i * sh - (shave_h if i > 0 else 0)
        bottom = (i + 1) * sh + (shave_h if i < n_h - 1 else 0)
        for j in range(n_w):
            left = j * sw - (shave_w if j > 0 else 0)
            right = (j + 1) * sw + (shave_w if j < n_w - 1 else 0)
            piece = forward(np.ascontiguousarray(img[..., top:bottom, left:right]))
            oy, ox = (shave_h if i > 0 else 0) * scale, (shave_w if j > 0 else 0) * scale
            out[..., i * sh * scale:(i + 1) * sh * scale, j * sw * scale:(j + 1) * sw * scale] = \
                piece[..., oy:oy + sh * scale, ox:ox + sw * scale]
    return out[..., : h * scale, : w * scale]


def torch_forward(model):
    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return forward


# ---- checkpoints ----


@pytest.mark.parametrize("manifest_name", V1_MANIFESTS)
def test_released_checkpoint_loads_strictly(manifest_name):
    assert_loads_strictly(None, FIX / manifest_name)


def test_unet_global_residual_and_size():
    """No golden U-Net fixture exists: check what can be, the shapes through all levels
    and the global residual (a zero output conv returns the input exactly)."""
    torch.manual_seed(0)
    net = MambaIRUNet(dim=32, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, mlp_ratio=1.5).eval()
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        y = net(x)
        assert y.shape == x.shape and not torch.allclose(y, x)
        net.output.weight.zero_()
        assert torch.equal(net(x), x)


# ---- tiny fixtures: PyTorch ----


@pytest.mark.parametrize("name", TINY)
def test_tiny_fixture_torch(name):
    model, meta = tiny(name)
    x, golden = np.load(FIX / f"{name}.input.npy"), np.load(FIX / f"{name}.output.npy")
    out = official_test(torch_forward(model), x, meta["hyperparameters"]["upscale"])
    assert out.shape == golden.shape
    assert np.abs(out - golden).max() <= TOLERANCE


def test_partition_fixture_torch():
    """203x205: 2x2 overlapping pieces; a single full forward differs from this by ~3.6."""
    model, _ = tiny("mambair_tiny_dn")
    x = np.load(FIX / "mambair_tiny_dn.partition.input.npy")
    golden = np.load(FIX / "mambair_tiny_dn.partition.output.npy")
    assert np.abs(official_test(torch_forward(model), x, 1) - golden).max() <= TOLERANCE


def test_scan_chunk_changes_speed_not_results():
    x = np.load(FIX / "mambair_tiny_sr_x2.input.npy")
    outs = [torch_forward(tiny("mambair_tiny_sr_x2", scan_chunk=c)[0])(x) for c in (1, 4, 64, 256)]
    assert max(np.abs(o - outs[0]).max() for o in outs[1:]) < 1e-5


# ---- tiny fixtures: ONNX Runtime ----


@pytest.mark.slow  # a dynamic-H/W export of the tiny denoiser and 4 pieces of 112x113: ~20 s
def test_tiny_dn_onnx_dynamic_sizes(tmp_path):
    """One export at the default chunk (16) runs: the fixture (15x11, 11 chunks), the
    partition fixture's 112x113 pieces, and a 3x4 image shorter than one chunk."""
    model, _ = tiny("mambair_tiny_dn")
    x = np.load(FIX / "mambair_tiny_dn.input.npy")
    path = export_onnx(model, {"x": torch.from_numpy(x)}, tmp_path / "dn.onnx")

    def ort(a):
        return run_onnx(path, {"x": a})

    assert np.abs(official_test(ort, x, 1) - np.load(FIX / "mambair_tiny_dn.output.npy")).max() <= TOLERANCE
    big = np.load(FIX / "mambair_tiny_dn.partition.input.npy")
    golden = np.load(FIX / "mambair_tiny_dn.partition.output.npy")
    assert np.abs(official_test(ort, big, 1) - golden).max() <= TOLERANCE
    small = np.random.default_rng(0).random((2, 3, 3, 4), dtype=np.float32)
    assert np.abs(ort(small) - torch_forward(model)(small)).max() <= TOLERANCE


@pytest.mark.slow  # one fixed-size export each: ~6-9 s
@pytest.mark.parametrize("name", ["mambair_tiny_car_gray", "mambair_tiny_lightsr_x3", "mambair_tiny_sr_x2"])
def test_tiny_fixture_onnx(name, tmp_path):
    # A short chunk keeps the export quick (fewer prefix levels in the Scan body); the chunk
    # changes speed, not results (test_scan_chunk_changes_speed_not_results).
    model, meta = tiny(name, scan_chunk=4)
    x, golden = np.load(FIX / f"{name}.input.npy"), np.load(FIX / f"{name}.output.npy")
    path = export_onnx(model, {"x": torch.from_numpy(x)}, tmp_path / f"{name}.onnx", dynamic_hw=False)
    out = official_test(lambda a: run_onnx(path, {"x": a}), x, meta["hyperparameters"]["upscale"])
    assert np.abs(out - golden).max() <= TOLERANCE


# ---- the selective scan ----


def scan_inputs(length, dim=8, n=4, groups=2, batch=2, dtype=torch.float64, seed=0, decay="mixed"):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    if decay == "strong":  # exp(delta * A) ~ exp(-10..-2000) per step: underflows to 0
        A = -torch.exp(torch.empty(dim, n, dtype=dtype).uniform_(2.0, 6.0, generator=g))
        bias = torch.full((dim,), 3.0, dtype=dtype)
    elif decay == "weak":  # exp(delta * A) ~ 1 - 1e-8: the state sums the whole sequence
        A = -torch.full((dim, n), 1e-6, dtype=dtype)
        bias = torch.full((dim,), -4.0, dtype=dtype)
    else:
        A = -torch.exp(rnd(dim, n))
        bias = rnd(dim)
    return dict(u=rnd(batch, dim, length), delta=rnd(batch, dim, length), A=A,
                B=rnd(batch, groups, n, length), C=rnd(batch, groups, n, length),
                D=rnd(dim), delta_bias=bias, delta_softplus=True)  # fmt: skip


@pytest.mark.parametrize("length, chunk", [(1, 64), (37, 1), (37, 8), (64, 64), (300, 16), (300, 128)])
def test_scan_equals_recurrence_float64(length, chunk):
    args = scan_inputs(length)
    ref = selective_scan_reference(**args)
    assert (selective_scan(**args, chunk=chunk) - ref).abs().max() < 1e-10


def test_scan_variants():
    """B, C without a group axis; no D, no bias, no softplus; one group per channel."""
    args = scan_inputs(50, groups=1)
    args["B"], args["C"] = args["B"][:, 0], args["C"][:, 0]
    for drop in ({}, {"D": None, "delta_bias": None, "delta_softplus": False}):
        a = {**args, **drop}
        if not a["delta_softplus"]:
            a["delta"] = a["delta"].abs()
        assert (selective_scan(**a, chunk=16) - selective_scan_reference(**a)).abs().max() < 1e-10
    a = scan_inputs(40, dim=6, groups=6)
    assert (selective_scan(**a, chunk=8) - selective_scan_reference(**a)).abs().max() < 1e-10


U32 = 2.0**-24  # float32 unit roundoff (round to nearest): u, about 6.0e-8
LAMBDA = 5.0  # confidence of the probabilistic bound (float32_bound)


def output_scale(args64) -> float:
    """Y = max over (b, d, t) of sum_n |C_t[n]| size[n] + |D u_t|, the size that the roundings
    of the scan are relative to, carried to the output. size[n] = max over t of |h_t[n]| and of
    R_t[n] = sqrt(sum_s P_ts^2 inp_s^2) (P_ts = decay from step s to t, inp = delta u B): the
    state and the root-sum-square of what it sums. Float64 recurrence."""
    a = args64
    delta = torch.nn.functional.softplus(a["delta"] + a["delta_bias"].unsqueeze(-1))
    per_group = a["u"].shape[1] // a["B"].shape[1]
    B, C = a["B"].repeat_interleave(per_group, 1), a["C"].repeat_interleave(per_group, 1)
    h = a["u"].new_zeros(*a["u"].shape[:2], a["A"].shape[1])
    r2, size = h.clone(), h.clone()
    for t in range(a["u"].shape[-1]):
        dt = delta[:, :, t].unsqueeze(-1)
        decay, inp = torch.exp(dt * a["A"]), dt * a["u"][:, :, t].unsqueeze(-1) * B[..., t]
        h, r2 = decay * h + inp, decay**2 * r2 + inp**2
        size = torch.maximum(size, torch.maximum(h.abs(), r2.sqrt()))
    return ((C.abs() * size.unsqueeze(-1)).sum(2) + (a["D"].unsqueeze(-1) * a["u"]).abs()).max().item()


def float32_bound(args64, chunk: int) -> tuple[float, int, float]:
    """(bound, m, Y): how far the float32 chunked scan may be from the float64 recurrence.

    u = 2^-24, float32's unit roundoff: a rounding changes a value v by at most u |v|. To first
    order the error of y_t is a sum of such rounding errors, each carried to y_t with weight at
    most |C_t[n]| (decays are <= 1); Y (output_scale) bounds the values rounded.
    - Plain float32 recurrence: 3 roundings of the state per step (the decay exp(delta A), the
      product, the sum), m = 3 L: up to 3 L u Y = 7.3e-4 Y at L = 4096. And no better in
      practice where decays are near 1: a decay within u/2 of 1 (weak: exp(-1e-8)) rounds to 1
      at every step, the same way, so those errors add up linearly.
    - Chunked scan, chunk T, decays carried as e = decay - 1, a decay applied as x + (y + e x)
      (see selective_scan.py): the carried state is rounded at its own size once in the first
      step of a chunk and once per reduction level, ceil(L / T)(1 + log2 T) times; then 2 log2 T
      times on the way down to y_t's position, and N + 2 for the sum over n and + D u. Each input
      takes 2 log2 T + 6 more roundings (float32 inputs, delta u B, two per level up) before it
      joins a state; those are independent between inputs, so they weigh against R (see
      output_scale): (2 log2 T + 6)^2 in m. m = 790 for L = 4096, T = 64, N = 4.
    With independent rounding errors of mean zero (what carrying e buys: no decay rounded the same
    way at every step), Azuma-Hoeffding bounds the sum by lambda sqrt(m) u Y with probability at
    least 1 - 2 exp(-lambda^2 / 2) (probabilistic rounding error analysis: Higham & Mary, SIAM J.
    Sci. Comput. 41, 2019): lambda = 5, 1 - 7e-6; the bound is 141 u Y = 8.4e-6 Y here. The
    chunked scan that multiplied rounded float32 decays missed it on the weak case (158 u Y).
    """
    length, n = args64["u"].shape[-1], args64["A"].shape[1]
    levels = int(math.log2(chunk))
    m = math.ceil(length / chunk) * (1 + levels) + 2 * levels + n + 2 + (2 * levels + 6) ** 2
    scale = output_scale(args64)
    return LAMBDA * math.sqrt(m) * U32 * scale, m, scale


def as_float32(args64: dict) -> dict:
    return {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in args64.items()}


@pytest.mark.parametrize("decay", ["strong", "weak", "mixed"])
def test_scan_float32_long_sequence(decay):
    """L = 4096 (a 64x64 tile), chunk 64: float32 chunked vs the float64 recurrence, within
    float32_bound (observed: 1/30 of it or less, with AVX2 and with ATEN_CPU_CAPABILITY=default);
    no inf/nan where decays underflow (strong) or never decay below float32's 1 (weak). The
    plain float32 recurrence's error is reported beside it (pytest -s)."""
    args64 = scan_inputs(4096, dim=8, n=4, batch=1, decay=decay, seed=1)
    ref = selective_scan_reference(**args64)
    args32 = as_float32(args64)
    out = selective_scan(**args32, chunk=64).double()
    assert torch.isfinite(out).all()
    err = (out - ref).abs().max().item()
    sequential = (selective_scan_reference(**args32).double() - ref).abs().max().item()
    bound, m, scale = float32_bound(args64, 64)
    report = (
        f"{decay} decays: float32 chunked error {err:.2e} = {err / (U32 * scale):.1f} u Y, bound "
        f"{bound:.2e} (lambda sqrt(m) u Y, m = {m}, Y = {scale:.1f}); plain float32 recurrence "
        f"{sequential:.2e} = {sequential / (U32 * scale):.1f} u Y"
    )
    print(report)
    assert err <= bound, report


def test_scan_operator_path_equals_loop():
    """The path taken under export (torch's scan operator) gives the eager loop's result."""
    args = scan_inputs(150)
    loop = selective_scan(**args, chunk=16, use_scan_op=False)
    assert (selective_scan(**args, chunk=16, use_scan_op=True) - loop).abs().max() < 1e-12


def test_scan_rejects_bad_shapes():
    args = scan_inputs(10)
    with pytest.raises(ValueError, match="power of two"):
        selective_scan(**args, chunk=12)
    with pytest.raises(ValueError, match="groups"):
        selective_scan(**{**args, "B": args["B"][:, :, :3], "C": args["C"][:, :, :3]})


class _Scan(torch.nn.Module):
    def __init__(self, args):
        super().__init__()
        self.A = torch.nn.Parameter(args["A"])
        self.D = torch.nn.Parameter(args["D"])
        self.bias = torch.nn.Parameter(args["delta_bias"])

    def forward(self, u, delta, b, c):
        return selective_scan(u, delta, self.A, b, c, self.D, self.bias, True, chunk=16)


def _node_count(graph) -> int:
    """Nodes of a graph and of every subgraph (Scan/Loop bodies)."""
    count = 0
    for node in graph.node:
        count += 1
        for attr in node.attribute:
            if attr.g.node:
                count += _node_count(attr.g)
    return count


def _export_scan(args32: dict, path) -> np.ndarray:
    """Export _Scan at args32's sizes (fixed), run it in ONNX Runtime; its output."""
    inputs = (args32["u"], args32["delta"], args32["B"], args32["C"])
    torch.onnx.export(_Scan(args32).eval(), inputs, path, dynamo=True, opset_version=18, verbose=False)
    return run_onnx(path, dict(zip(("u", "delta", "b", "c"), (t.numpy() for t in inputs), strict=True)))


@pytest.mark.slow  # two small exports: ~6 s
def test_scan_onnx_graph_does_not_grow_with_length(tmp_path):
    """Exported at L = 64 and at L = 1024 (fixed sizes, so an unrolled loop would show):
    the same node count, one Scan node, and ONNX Runtime matches the recurrence (float32_bound)."""
    import onnx

    counts = []
    for length in (64, 1024):
        args64 = scan_inputs(length, batch=1)
        path = tmp_path / f"scan{length}.onnx"
        got = _export_scan(as_float32(args64), path)
        graph = onnx.load(path).graph
        counts.append(_node_count(graph))
        assert [n.op_type for n in graph.node].count("Scan") == 1
        ref = selective_scan_reference(**args64).numpy()
        assert np.abs(got - ref).max() <= float32_bound(args64, 16)[0]
    assert counts[0] == counts[1] < 250


@pytest.mark.slow  # one export: ~3 s
def test_scan_onnx_float32_weak_decays(tmp_path):
    """Exported, the decays' expm1 is built from Exp, Mul and Add (ONNX has no Expm1, and
    torch.onnx writes torch.expm1 as Exp - 1): ONNX Runtime keeps float32_bound where decays are
    within 2^-24 of 1 too (L = 4096, chunk 16)."""
    args64 = scan_inputs(4096, dim=8, n=4, batch=1, decay="weak", seed=1)
    got = _export_scan(as_float32(args64), tmp_path / "scan_weak.onnx")
    err = np.abs(got - selective_scan_reference(**args64).numpy()).max()
    bound, m, scale = float32_bound(args64, 16)
    report = f"ONNX Runtime, weak decays: error {err:.2e} = {err / (U32 * scale):.1f} u Y, bound {bound:.2e} (m = {m})"
    print(report)
    assert err <= bound, report
