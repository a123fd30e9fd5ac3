"""The Mamba selective scan in plain tensor operations: CPU-friendly and exportable to ONNX.

`selective_scan` has the semantics of mamba_ssm's `selective_scan_fn` (without `z` and
without returning the last state): for every channel d and state index n

    delta_t = softplus(delta_t + delta_bias)        (when asked)
    h_t     = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t,    h_{-1} = 0
    y_t     = sum_n C_t[n] * h_t[n] + D[d] * u_t

B and C are shared by the channels of a group: channel d reads group d // (dim / groups).

How it is computed: the sequence is cut into chunks of `chunk` steps. Inside a chunk all
states come out of a parallel prefix (odd/even reduction, log2(chunk) levels, O(chunk)
work); across chunks a short recurrence carries the state (a Python loop when eager, one
ONNX Scan node when exported, so the graph does not grow with the sequence length).

Numerics: with delta >= 0 and A <= 0 every per-step decay exp(delta * A) lies in (0, 1].
Decays are carried as e = decay - 1 in [-1, 0] (an expm1 of the log-decay delta * A), never as
the decay itself: float32 has nothing between 1 - 2^-24 and 1 (exp(-2e-8) rounds to 1), and
multiplying the rounded decays of thousands of steps together made the float32 result drift
from the truth by up to ~L * 2^-24 of the state where decays are near 1 (by how much depended
on how the CPU's exp rounded). Two steps combine as (1 + e1)(1 + e2) = 1 + (e2 + e1 e2
+ e1), computed on the e's, so a combined decay stays accurate relative to its distance from 1;
a decayed state plus an addend, (1 + e) x + y, is computed as x + (y + e * x): the small
decay term joins the smaller addend first instead of being rounded away against x. Nothing
forms exp(+S) or divides by a decay, so strongly decaying channels underflow harmlessly
(e -> -1, decay -> 0) instead of overflowing, and a zero log-decay stays exactly 1 (e = 0).
The carried state enters a chunk through its first step, scaled by that step's decay, exactly
as in the recurrence. In float32 the carried state is rounded once per reduction level and
chunk, (L / chunk)(1 + log2(chunk)) times, instead of 3 times per step in the plain
recurrence, and no rounding repeats the same way at every step (the error bound:
float32_bound in tests/test_arch_mambair.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Check shapes; B, C -> [batch, groups, N, L]; delta with bias and softplus applied."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be [batch, dim, L], got {tuple(u.shape)} and {tuple(delta.shape)}")
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    dim, groups = u.shape[1], B.shape[1]
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be [dim={dim}, N], got {tuple(A.shape)}")
    if dim % groups != 0 or B.shape != C.shape or B.shape[2] != A.shape[1]:
        raise ValueError(f"B, C must be [batch, groups, N, L] with groups dividing dim; got {tuple(B.shape)}, {tuple(C.shape)}")
    if delta_bias is not None:
        delta = delta + delta_bias.unsqueeze(-1)
    if delta_softplus:
        delta = F.softplus(delta)
    return delta, B, C


def _expm1(x: torch.Tensor) -> torch.Tensor:
    """exp(x) - 1 for x <= 0, accurate relative to its own size, also near 0 where exp(x) - 1
    loses every digit. Eager: torch.expm1. Under export, from Exp, Mul and Add only: ONNX has
    no Expm1 and torch.onnx writes torch.expm1 as Exp - 1, which would lose the small decays
    in ONNX Runtime. There x = s + r with s = max(x, -1/8) and r = x - s <= 0, and
    expm1(x) = expm1(s) exp(r) + (exp(r) - 1), with expm1(s) a degree-5 Taylor polynomial
    (truncation below |s|^5 / 720 <= 0.7 * 2^-24 relative); r = 0 (exp(r) = 1 exactly) unless
    x < -1/8, where |expm1(x)| > 0.117 and exp(r) - 1 is accurate. Within ~6 units of
    float32 roundoff of expm1 (2 for torch.expm1)."""
    if not _exporting():
        return torch.expm1(x)
    s = x.clamp(min=-0.125)
    decay_r = torch.exp(x - s)
    poly = s * (1 + s * (1 / 2 + s * (1 / 6 + s * (1 / 24 + s * (1 / 120)))))
    return torch.addcmul(decay_r - 1, poly, decay_r)


def _prefix_states(e: torch.Tensor, inp: torch.Tensor, length: int) -> torch.Tensor:
    """All states of h_t = (1 + e_t) h_{t-1} + inp_t (h_{-1} = 0) along dim 0; e_t in [-1, 0].

    Odd/even reduction: pair neighbours (t = 2i, 2i+1) into one step of half the length,
    solve that recursively for the odd positions, then fill in the even ones. The length
    must be a power of two; the recursion unrolls to log2(length) levels. (The in-place adds
    only touch tensors made on the line before.)
    """
    if length == 1:
        return inp
    e2 = e.unflatten(0, (length // 2, 2))
    x2 = inp.unflatten(0, (length // 2, 2))
    e_even, e_odd = e2[:, 0], e2[:, 1]
    x_even, x_odd = x2[:, 0], x2[:, 1]
    # Two steps in one: h_{2i+1} = (1 + e') h_{2i-1} + x' with e' = e_even + e_odd e_even + e_odd
    # and x' = x_even + (x_odd + e_odd x_even). (The top level's e' is never used.)
    e_pair = torch.addcmul(e_even, e_odd, e_even).add_(e_odd) if length > 2 else e_odd
    h_odd = _prefix_states(e_pair, torch.addcmul(x_odd, e_odd, x_even).add_(x_even), length // 2)
    # h_{2i} = h_{2i-1} + (x_even + e_even h_{2i-1}), and h_0 = x_0.
    prev = h_odd[:-1]
    h_even = torch.cat([x_even[:1], torch.addcmul(x_even[1:], e_even[1:], prev).add_(prev)], 0)
    return torch.stack([h_even, h_odd], 1).flatten(0, 1)


def _chunk_step(h, dt, x, B, C, A, chunk: int):
    """One chunk. h: [b, g, dg, N] state before the chunk; dt, x (= delta * u): [b, g, dg, T];
    B, C: [b, g, N, T]; A: [g, dg, N]. Returns (state after the chunk, y [b, g, dg, T]).
    No shape arithmetic in here: under export this is the ONNX Scan body."""
    e = _expm1(dt.permute(3, 0, 1, 2).unsqueeze(-1) * A)  # decay - 1: [T, b, g, dg, N], in [-1, 0]
    inp = x.permute(3, 0, 1, 2).unsqueeze(-1) * B.permute(3, 0, 1, 2).unsqueeze(-2)
    # The carried state enters through the first step: h_0 = h + (inp_0 + e_0 h).
    h = h.unsqueeze(0)
    first = torch.addcmul(inp[:1], e[:1], h).add_(h)
    states = _prefix_states(e, torch.cat([first, inp[1:]], 0), chunk)
    y = torch.einsum("tbgdn,tbgn->tbgd", states, C.permute(3, 0, 1, 2))  # sum over N
    return states[-1].clone(), y.permute(1, 2, 3, 0)


def _exporting() -> bool:
    return torch.compiler.is_exporting() or torch.compiler.is_compiling()


def _run_chunks(h0, dt, x, B, C, A, n_chunks: int, chunk: int, use_scan_op: bool):
    """Apply _chunk_step over the chunks; returns y as [b, g, dg, n_chunks * chunk]."""
    b, g, dg, _ = dt.shape
    n = B.shape[2]
    if use_scan_op:
        # The scan operator itself, without the torch.scan wrapper: that wrapper traces the
        # body with dynamo, which makes exporting several times slower.
        from torch._higher_order_ops.scan import scan_op

        # Chunk axis first: the scan (ONNX Scan) iterates over dim 0.
        def split(t, c):
            return t.reshape(b, g, c, n_chunks, chunk).permute(3, 0, 1, 2, 4)

        def body(h, dt_c, x_c, B_c, C_c, A_):
            return list(_chunk_step(h, dt_c, x_c, B_c, C_c, A_, chunk))

        _, ys = scan_op(body, [h0], [split(dt, dg), split(x, dg), split(B, n), split(C, n)], (A,))
        return ys.permute(1, 2, 3, 0, 4).reshape(b, g, dg, n_chunks * chunk)
    h, out = h0, []
    for i in range(n_chunks):
        s = slice(i * chunk, (i + 1) * chunk)
        h, y = _chunk_step(h, dt[..., s], x[..., s], B[..., s], C[..., s], A, chunk)
        out.append(y)
    return torch.cat(out, -1)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk: int = 64,
    *,
    use_scan_op: bool | None = None,
) -> torch.Tensor:
    """Chunked selective scan (see the module docstring for the recurrence and numerics).

    u, delta: [batch, dim, L]; A: [dim, N]; B, C: [batch, groups, N, L] or [batch, N, L];
    D, delta_bias: [dim]. Returns y: [batch, dim, L] in u's dtype.
    `chunk` (a power of two) is the number of steps solved in parallel at once.
    `use_scan_op`: carry the state across chunks with torch's scan operator (exported as
    one ONNX Scan node) instead of a Python loop; by default only while exporting.
    """
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two, got {chunk}")
    delta, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    groups, n = B.shape[1], B.shape[2]
    per_group = dim // groups
    n_chunks = (length + chunk - 1) // chunk
    pad = n_chunks * chunk - length  # padded steps come last, so they change nothing
    dt = F.pad(delta, (0, pad)).reshape(batch, groups, per_group, length + pad)
    x = F.pad(delta * u, (0, pad)).reshape(batch, groups, per_group, length + pad)
    Bp, Cp = F.pad(B, (0, pad)), F.pad(C, (0, pad))
    h0 = u.new_zeros(batch, groups, per_group, n)
    if use_scan_op is None:
        use_scan_op = _exporting()
    y = _run_chunks(h0, dt, x, Bp, Cp, A.reshape(groups, per_group, n), n_chunks, chunk, use_scan_op)
    y = y.reshape(batch, dim, length + pad)[..., :length]
    if D is not None:
        y = y + D.unsqueeze(-1) * u
    return y


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """The plain sequential recurrence, one step at a time (for tests and benchmarks)."""
    delta, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    per_group = dim // B.shape[1]
    B = B.repeat_interleave(per_group, 1)  # [batch, dim, N, L]
    C = C.repeat_interleave(per_group, 1)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dt = delta[:, :, t].unsqueeze(-1)
        h = torch.exp(dt * A) * h + dt * u[:, :, t].unsqueeze(-1) * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.unsqueeze(-1) * u
    return y
