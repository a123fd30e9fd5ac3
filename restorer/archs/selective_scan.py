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
The prefix only ever multiplies such decays together, i.e. it forms exp(S_t - S_s) with S
the cumulative log-decay and S_t - S_s <= 0; it never forms exp(+S) or divides by a decay,
so strongly decaying channels underflow harmlessly to 0 instead of overflowing, and
near-zero decays stay at 1. The carried state enters a chunk through its first step,
scaled by that step's decay, exactly as in the recurrence.
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


def _prefix_states(decay: torch.Tensor, inp: torch.Tensor, length: int) -> torch.Tensor:
    """All states of h_t = decay_t * h_{t-1} + inp_t (h_{-1} = 0) along dim 0.

    Odd/even reduction: pair neighbours (t = 2i, 2i+1) into one step of half the length,
    solve that recursively for the odd positions, then fill in the even ones. The length
    must be a power of two; the recursion unrolls to log2(length) levels.
    """
    if length == 1:
        return inp
    d2 = decay.unflatten(0, (length // 2, 2))
    x2 = inp.unflatten(0, (length // 2, 2))
    d_even, d_odd = d2[:, 0], d2[:, 1]
    x_even, x_odd = x2[:, 0], x2[:, 1]
    # Two steps in one: h_{2i+1} = (d_odd d_even) h_{2i-1} + (d_odd x_even + x_odd).
    h_odd = _prefix_states(d_odd * d_even, torch.addcmul(x_odd, d_odd, x_even), length // 2)
    # h_{2i} = d_even h_{2i-1} + x_even, and h_0 = x_0.
    h_even = torch.cat([x_even[:1], torch.addcmul(x_even[1:], d_even[1:], h_odd[:-1])], 0)
    return torch.stack([h_even, h_odd], 1).flatten(0, 1)


def _chunk_step(h, dt, x, B, C, A, chunk: int):
    """One chunk. h: [b, g, dg, N] state before the chunk; dt, x (= delta * u): [b, g, dg, T];
    B, C: [b, g, N, T]; A: [g, dg, N]. Returns (state after the chunk, y [b, g, dg, T]).
    No shape arithmetic in here: under export this is the ONNX Scan body."""
    decay = torch.exp(dt.permute(3, 0, 1, 2).unsqueeze(-1) * A)  # [T, b, g, dg, N], in (0, 1]
    inp = x.permute(3, 0, 1, 2).unsqueeze(-1) * B.permute(3, 0, 1, 2).unsqueeze(-2)
    # The carried state enters through the first step: h_0 = decay_0 h + inp_0.
    first = torch.addcmul(inp[:1], decay[:1], h.unsqueeze(0))
    states = _prefix_states(decay, torch.cat([first, inp[1:]], 0), chunk)
    y = torch.matmul(states, C.permute(3, 0, 1, 2).unsqueeze(-1)).squeeze(-1)  # sum over N
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
