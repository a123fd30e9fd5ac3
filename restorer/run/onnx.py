"""ONNX Runtime sessions: the one place restorer creates them (runners, the text detector and
encoder, export parity checks). An explicit provider list, CUDA first, CPU fallback with one
warning, and the guard against a broken onnxruntime + onnxruntime-gpu install.

onnxruntime lists CUDAExecutionProvider as available even on a machine without a GPU or
CUDA libraries, and then silently creates a CPU session; so the provider that actually
runs is read back from the session, never assumed.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import platform
from pathlib import Path
from typing import NamedTuple

import numpy as np

from restorer.archs.requirements import Requirements
from restorer.run.runner import NetworkRunner, OutOfMemory, RunnerInfo

log = logging.getLogger("restorer")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# `openvino[:GPU|NPU]` runs the networks with OpenVINO (restorer.run.openvino); ONNX Runtime
# sessions (the text encoder and detector) then run on its CPU provider.
DEVICES = ("auto", "cuda", "cpu", "openvino", "openvino:GPU", "openvino:NPU")
# Set on the log record of a "not on the device asked for" warning: a front end shows the
# first of a run and drops the rest (every session of a run would say the same).
DEVICE_WARNING = "restorer_device_warning"


class RuntimeMissing(RuntimeError):
    pass


def import_onnxruntime():
    """onnxruntime, or a clear message about which package to install (never two builds)."""
    from importlib import metadata

    dists = [d for d in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino") if _installed(metadata, d)]
    if len(dists) > 1:
        raise RuntimeMissing(
            f"both {' and '.join(dists)} are installed and overwrite each other; keep one: "
            f"pip uninstall -y {' '.join(dists)} && pip install 'restorer[gpu]' (or [cpu], or [openvino])"
        )
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeMissing(
            "ONNX Runtime is not installed: pip install 'restorer[cpu]' (or 'restorer[gpu]' for CUDA, "
            "'restorer[openvino]' for Intel)"
        ) from None
    return onnxruntime


def _installed(metadata, name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def provider_list(device: str, available: list[str]) -> tuple[list[str], str | None]:
    """Providers to ask for, and why CUDA is left out when it was asked for."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "cpu" or device.startswith("openvino"):
        return [CPU], None
    if CUDA in available:
        return [CUDA, CPU], None
    reason = "this onnxruntime build has no CUDA provider (install restorer[gpu])"
    return [CPU], reason if device == "cuda" else None


class Session(NamedTuple):
    session: object  # onnxruntime.InferenceSession
    provider: str  # the provider that actually runs
    note: str | None  # why CUDA was asked for and not used


def physical_cores() -> int:
    """The physical cores this process may run on: the thread count for every runtime.
    A second thread on a hyperthread sibling shares the core's vector units and makes
    convolution networks slower, not faster."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def _options(ort, shapes: dict[str, int] | None, optimize: bool):
    options = ort.SessionOptions()
    options.log_severity_level = 4  # our own one-line warning replaces ORT's CUDA noise
    options.intra_op_num_threads = physical_cores()
    options.inter_op_num_threads = 1
    # Memory: no planned pattern, and no arena once the sizes are fixed. The pattern
    # preallocates every buffer of a run at once, and the arena keeps what it grew to (in
    # powers of two) for the session's life: without them a fixed-size HAT-S tile peaks 40%
    # lower, for 1-2% of speed. A dynamic-size session keeps the arena: without it the same
    # tile peaked at 2.9 GB instead of 0.9.
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = not shapes
    for name, size in (shapes or {}).items():
        options.add_free_dimension_override_by_name(name, size)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def create_session(path: str | Path, device: str = "auto", *, shapes: dict[str, int] | None = None,
                   optimized: Path | None = None, optimize: bool = True) -> Session:
    """An InferenceSession on the best provider for `device`.

    `shapes` fixes the graph's symbolic dimensions (name -> size): with every shape known,
    ONNX Runtime folds the shape arithmetic away and plans memory once. `optimized` is where
    the CPU session's optimised graph is kept: read back (no optimisation at start-up) when
    it is there, else written once this session has optimised it. Without `optimize` the
    session only tells the graph's inputs and the provider (cheap: no graph optimisation)."""
    ort = import_onnxruntime()
    providers, reason = provider_list(device, ort.get_available_providers())
    keep = optimized is not None and providers == [CPU] and optimize
    session = _read_optimized(ort, optimized, shapes) if keep else None
    if session is None:
        session, reason = _optimize(ort, path, providers, reason, _options(ort, shapes, optimize),
                                    optimized if keep else None)
    note = None
    actual = session.get_providers()[0]
    if device in ("auto", "cuda") and actual != CUDA and (device == "cuda" or CUDA in providers):
        reason = reason or "the CUDA provider could not start (no GPU or CUDA libraries found)"
        note = f"CUDA unavailable: {reason}; running on CPU"
        log.warning(note, extra={DEVICE_WARNING: True})
    return Session(session, actual, note)


def _read_optimized(ort, optimized: Path, shapes: dict[str, int] | None):
    """A CPU session on the kept optimised graph, or None (not there, damaged, another build)."""
    if not optimized.is_file():
        return None
    try:
        session = ort.InferenceSession(str(optimized), _options(ort, shapes, False), providers=[CPU])
    except Exception:  # damaged, or written by another build: optimise again
        optimized.unlink(missing_ok=True)
        return None
    optimized.touch()  # recently used: kept by the pruning
    return session


def _optimize(ort, path, providers: list[str], reason: str | None, options, keep: Path | None):
    """A session optimised at load (a CUDA one that fails to start is retried on the CPU), its
    optimised graph written to `keep` whole or not at all; and why CUDA is not used."""
    scratch = keep.with_name(f".{keep.name}.{os.getpid()}.tmp") if keep is not None else None
    if scratch is not None:
        options.optimized_model_filepath = str(scratch)
    try:
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:
            if providers[0] != CUDA:
                raise
            reason = f"CUDA session failed: {str(e).splitlines()[0]}"
            session = ort.InferenceSession(str(path), options, providers=[CPU])
        if scratch is not None and scratch.is_file():
            os.replace(scratch, keep)  # a later start reads it as is
            _prune_optimized(keep)
    finally:
        if scratch is not None:
            scratch.unlink(missing_ok=True)
    return session, reason


def is_oom(error: Exception) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(
        k in text for k in ("failed to allocate", "out of memory", "bad_alloc", "cudaerrormemoryallocation")
    )


class OnnxRunner(NetworkRunner):
    """Runs an exported .onnx model; the image input is the session's first input.

    A graph with symbolic sizes runs a shape's first call on the dynamic graph, and from the
    shape's second call on (a folder of same-size photos) on a session with every size fixed:
    fixed shapes let ONNX Runtime fold the shape arithmetic and plan its memory. A batch of
    photos of many sizes thus builds one session, not one per photo; the tiles of an image,
    announced by the tiling engine (`expect_repeats`), go to the fixed session from the first. At most one fixed-size
    session is kept, and the dynamic one is released while it is there (one copy of the
    weights in memory; it is rebuilt from its kept optimised graph when a new shape comes).
    Each session's optimised graph is kept beside the model (CPU only: CUDA's depends on the
    card), so a later start skips the optimisation."""

    def __init__(self, path: str | Path, info: RunnerInfo, needs: Requirements, *, device: str = "auto",
                 fixed_inputs: dict[str, np.ndarray] | None = None):
        self.path = Path(path)
        session, provider, note = create_session(path, device, optimized=optimized_path(self.path, {}))
        self.device = "cpu" if provider == CPU else device  # said once, here, when CUDA is not there
        info.backend, info.provider = "onnx", provider
        if note:
            info.notes.append(note)
        shape = session.get_inputs()[0].shape
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
            # A fixed-size export: every tile is padded up to exactly that size.
            needs = needs.with_(fixed_tile=shape[2])
            info.notes.append(f"exported at a fixed {shape[2]}x{shape[3]} tile")
        super().__init__(info, needs, fixed_inputs)
        self.input_names = [i.name for i in session.get_inputs()]
        self._symbols = dict(zip(self.input_names, (list(i.shape) for i in session.get_inputs())))
        self._dynamic = session
        self._fixed: tuple[tuple, object] | None = None  # (sizes, session)
        self._seen: set[tuple] = set()  # sizes run once on the dynamic graph
        self._repeating: tuple[int, ...] | None = None  # the image batch shape announced to repeat

    def expect_repeats(self, shape: tuple[int, ...]) -> None:
        self._repeating = tuple(shape)

    def _session_for(self, feeds: dict[str, np.ndarray]):
        sizes = fixed_sizes(self._symbols, feeds)
        key = tuple(sorted(sizes.items()))
        if self._fixed is not None and self._fixed[0] == key:
            return self._fixed[1]
        repeats = feeds[self.input_names[0]].shape == self._repeating
        if not sizes or (key not in self._seen and not repeats):
            self._seen.add(key)
            if self._dynamic is None:
                self._dynamic = create_session(self.path, self.device, optimized=optimized_path(self.path, {})).session
            return self._dynamic
        # the shape's second call: release what is not needed before building (one set of weights)
        self._fixed = self._dynamic = None
        session = create_session(self.path, self.device, shapes=sizes, optimized=optimized_path(self.path, sizes)).session
        self._fixed = (key, session)
        return session

    def forward(self, batch: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feeds = network_feeds(self.info.model, self.input_names, batch, inputs)
        try:
            return self._session_for(feeds).run(None, feeds)[0]
        except Exception as e:
            if is_oom(e):
                raise OutOfMemory(str(e).splitlines()[0]) from e
            raise

    def close(self) -> None:
        self._fixed = self._dynamic = None  # ONNX Runtime frees a session's memory with its last reference


def fixed_sizes(symbols: dict[str, list], feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Each symbolic dimension of the graph's inputs (input name -> dims) at its size in
    `feeds`; {} when one symbol has two sizes (the call then runs on the dynamic graph)."""
    sizes: dict[str, int] = {}
    for name, dims in symbols.items():
        for dim, size in zip(dims, feeds[name].shape if name in feeds else ()):
            if isinstance(dim, str) and sizes.setdefault(dim, size) != size:
                return {}
    return sizes


def run_fixed(path: str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a graph once on the CPU with its sizes fixed to the feeds', as OnnxRunner runs it
    (for parity checks: what is checked is what runs). Feeds the graph does not take are
    left out."""
    probe = create_session(path, "cpu", optimize=False).session
    symbols = {i.name: list(i.shape) for i in probe.get_inputs()}
    del probe
    feeds = {k: v for k, v in feeds.items() if k in symbols}
    return create_session(path, "cpu", shapes=fixed_sizes(symbols, feeds)).session.run(None, feeds)


def network_feeds(model: str, names: list[str], batch: np.ndarray, inputs: dict[str, np.ndarray]) -> dict:
    """The graph's inputs by name: the image batch first, then each extra input, a
    one-row input repeated to the batch."""
    feeds = {names[0]: batch}
    for name in names[1:]:
        if name not in inputs:
            raise ValueError(f"{model}: missing network input {name!r}")
        value = np.asarray(inputs[name], dtype=np.float32)
        if value.shape[0] != batch.shape[0] and value.shape[0] == 1:
            value = np.repeat(value, batch.shape[0], axis=0)
        feeds[name] = value
    return feeds


def optimized_path(model: Path, sizes: dict[str, int]) -> Path | None:
    """Where the optimised graph of `model` at `sizes` is kept: beside the model, named by
    everything the optimisation depends on (the model file, the sizes, the ONNX Runtime
    version, the processor's instruction sets). None where the folder is not writable."""
    folder = model.parent / ".optimized"
    try:
        stat = model.stat()
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    ort = import_onnxruntime()
    facts = [model.name, str(stat.st_size), str(stat.st_mtime_ns), repr(sorted(sizes.items())),
             ort.__version__, platform.machine(), _cpu_flags()]
    digest = hashlib.sha1("\n".join(facts).encode()).hexdigest()[:16]
    return folder / f"{model.stem}.{digest}.onnx"


KEPT_OPTIMIZED = 2  # optimised graphs kept per model (the tile shapes in use): they can be large


def _prune_optimized(newest: Path) -> None:
    """Keep the newest KEPT_OPTIMIZED optimised graphs of a model: a batch of images of many
    small sizes must not fill the disk with one graph per size."""
    model = newest.name.rsplit(".", 2)[0]
    graphs = sorted(newest.parent.glob(f"{glob.escape(model)}.*.onnx"), key=_mtime, reverse=True)
    for old in [g for g in graphs if g.name.rsplit(".", 2)[0] == model][KEPT_OPTIMIZED:]:
        old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()
