"""`--engine ray`: the batch loop's files restored by a pool of Ray actors (restorer[cluster]).

The same batch as restorer.batch.loop.run_batch, with the restoring spread over workers:
- the driver (this process) settles the batch first (`loop.settle`: outputs that would replace
  an input, clashes, what the output folders' journals say is skipped or redone) and marks the
  output folders, exactly as run_batch does;
- each Ray actor builds one RunnerCache (its networks once) and runs `loop.render` on whole
  images: read, restore, encode; it writes nothing;
- the encoded outputs stream back to the driver as they finish, and the driver runs
  `loop.commit`: the output written atomically (temporary name, then rename) and journaled.

So both engines run the same per-file code and write the same bytes; journals are written by
one process; a worker that dies writes nothing half-way, and Ray Data gives its images to a
restarted actor (max_restarts / max_task_retries). Inputs are read by the workers: on a
multi-machine cluster they must be at the same absolute path on every node (a shared folder),
or at URLs (s3://, gs://, hdfs://: restorer.batch.remote, which then also writes the outputs
and the journal).

Ray is imported inside the functions only: importing this module needs no Ray.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from restorer.batch import files, journal
from restorer.batch.files import Item
from restorer.batch.loop import Output, PlanId, _claim_folders, _touch, commit, failures_recorded, render, settle
from restorer.batch.remote import RemoteBatch, fetch
from restorer.batch.remote import Writer as RemoteWriter
from restorer.batch.remote import settle as remote_settle
from restorer.plan.request import Plan
from restorer.run.tiles import CancelToken

# Environment passed on to the workers (the model store; the fault-injection hook of the tests).
WORKER_ENV = ("RESTORER_HOME", "RESTORER_TEST_CRASH_ONCE", "RESTORER_TEST_CRASH_DIR")
MAX_TASK_RETRIES = 3  # an image whose worker died is given to a restarted one this many times


class ClusterError(Exception):
    """Ray cannot be started or joined, or has no room for a worker; str() is one line."""


@dataclass
class Progress:
    """Images finished of the batch's pending ones, and how fast."""

    done: int
    total: int
    seconds: float  # since the workers were asked to start

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


def run_batch_ray(
    items: list[Item],
    plan: Plan,
    output: Output,
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    ship_models: bool = False,
    cancel: CancelToken | None = None,
    on_item: Callable[[int, Item], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    remote: RemoteBatch | None = None,
) -> bool:
    """run_batch's contract on a Ray cluster: every pending item ends done or failed (with
    one line naming the file); returns False when cancelled (the rest marked cancelled).

    `address`: None starts a local Ray (or uses the one this process already started),
    "auto" or "HOST:PORT" joins a cluster ("ray://", Ray Client, is refused). `workers`: actors (default: as many as the
    cluster has CPUs, or GPUs / gpus_per_worker). `ship_models`: the models the plan uses go
    to the workers through Ray's object store, into a store of their own (for nodes that do
    not share this machine's model store); else the workers read this store (RESTORER_HOME).
    `on_item(index, item)` when an item is
    settled or finishes (there is no "running": workers do not report a start);
    `on_progress` after each finished image. Raises ClusterError, before any image is
    restored, when Ray cannot be started or joined (the items are then left pending).
    `remote`: a batch with URLs (restorer.batch.remote; `items` are its items), settled and
    written by its own rules."""
    plan_id = PlanId(journal.plan_fingerprint(plan, output), journal.plan_summary(plan))
    if remote is not None:
        settled = remote_settle(remote, plan_id.fingerprint, overwrite=output.overwrite)
    else:
        settled = settle(items, plan, output)
    for index in settled:
        if on_item:
            on_item(index, items[index])
    markers: dict[Path, Path] = {}
    finished = True
    try:
        if remote is None:
            _claim_folders(items, markers, on_item)
        pending = [i for i, item in enumerate(items) if item.status == "pending"]
        if pending and not (cancel is not None and cancel.is_set()):
            # Ray prints what its raylets report (a worker that died) on stdout; stdout is the
            # caller's (restorer-cli --json writes its report there): to stderr while Ray runs.
            with contextlib.redirect_stdout(sys.stderr):
                finished = _run(items, pending, plan, output, plan_id, markers, address=address, workers=workers,
                                gpus_per_worker=gpus_per_worker, ship_models=ship_models, cancel=cancel, on_item=on_item,
                                on_progress=on_progress, on_note=on_note, remote=remote)
        elif pending:
            finished = False
    finally:
        for marker in markers.values():
            files.release_folder(marker)
    if not finished:
        for index, item in enumerate(items):
            if item.status in ("pending", "running"):
                item.status = "cancelled"
                if on_item:
                    on_item(index, item)
    return finished


def _run(items, pending, plan, output, plan_id, markers, *, address, workers, gpus_per_worker, ship_models, cancel, on_item,
         on_progress, on_note, remote) -> bool:
    import ray
    from ray.data import DataContext

    started_here = connect(address, workers)
    context = DataContext.get_current()
    errored_blocks = context.max_errored_blocks
    # An image whose worker died on every try is dropped from the stream (and reported failed
    # below) instead of stopping the whole job; the workers catch everything else themselves.
    context.max_errored_blocks = -1
    try:
        workers = pool_size(workers, gpus_per_worker, len(pending), on_note)
        if remote is None:
            rows = [{"index": i, "input": os.path.abspath(items[i].input), "output": os.path.abspath(items[i].output)}
                    for i in pending]
            sources, writer = None, None
        else:  # the workers read from the inputs' filesystems; outputs are named below the destination
            rows = [{"index": i, "input": str(items[i].input), "output": remote.outputs[i],
                     "tree": remote.sources[i].tree, "path": remote.sources[i].path} for i in pending]
            sources, writer = [tree.fs for tree in remote.inputs], RemoteWriter(remote)
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))  # one image per task
        store = [ray.put(pack_store(plan))] if ship_models else None  # in a list: Ray passes the ref as it is
        results = restore_map(dataset, plan, output, workers, gpus_per_worker, store, sources)
        for index in pending:
            items[index].status = "running"
        start = time.perf_counter()
        done = 0
        try:
            for row in results.iter_rows():
                index = _finish(items, pickle.loads(row["result"]), plan_id, on_note, writer)
                if remote is None:
                    _touch(markers.get(items[index].output.parent))
                done += 1
                if on_item:
                    on_item(index, items[index])
                if on_progress:
                    on_progress(Progress(done, len(pending), time.perf_counter() - start))
                if cancel is not None and cancel.is_set() and done < len(pending):
                    return False
            why = f"its Ray worker died or failed on each of {MAX_TASK_RETRIES + 1} tries"  # the block was dropped
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # the job itself stopped (the cluster went away)
            first = (str(e).strip().splitlines() or [""])[-1][:200]
            why = f"the Ray job stopped ({type(e).__name__}: {first})"
        for index in pending:
            item = items[index]
            if item.status == "running":
                item.status, item.error = "failed", f"'{item.input}': not restored: {why}"
                if on_item:
                    on_item(index, item)
        return True
    finally:
        context.max_errored_blocks = errored_blocks
        if started_here:
            ray.shutdown()


def restore_map(dataset, plan: Plan, output: Output, workers: int, gpus_per_worker: float, store: list | None = None,
                sources: list | None = None):
    """`dataset` (rows: index, input, output; with `sources`, the filesystems of a URL batch,
    also tree and path) mapped through a pool of `workers` RestoreWorker actors, each with
    one CPU or `gpus_per_worker` GPUs; lazy (runs as it is iterated)."""
    import warnings

    from ray.data import ActorPoolStrategy

    env = {name: os.environ[name] for name in WORKER_ENV if os.environ.get(name)}
    if store is not None:  # the workers keep their own store, filled from what was shipped
        env.pop("RESTORER_HOME", None)
    kwargs = dict(
        compute=ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={"plan": plan, "output": output, "store": store, "sources": sources},
        runtime_env={"env_vars": env} if env else None,  # the same model store on every worker
        **({"num_gpus": gpus_per_worker} if gpus_per_worker > 0 else {"num_cpus": 1}),
    )
    retries = {"max_restarts": -1, "max_task_retries": MAX_TASK_RETRIES}  # a dead actor restarted, its image redone
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ray_remote_args: deprecated in Ray 2.5x, the only way to bound retries
            return dataset.map(RestoreWorker, **kwargs, **retries)
    except TypeError:  # a Ray that no longer takes them: its defaults restart dead actors and retry without end
        return dataset.map(RestoreWorker, **kwargs)


def _finish(items: list[Item], result: dict, plan_id: PlanId, on_note, writer: RemoteWriter | None = None) -> int:
    """A worker's result into its item: committed (written, journaled) here, or failed; a
    URL batch's by its `writer`."""
    index = result["index"]
    item = items[index]
    item.steps = result["steps"]
    item.notes.extend(result["notes"])
    item.seconds = result["seconds"]
    for note in result["warnings"]:
        if on_note:
            on_note(note)
    rendered = result["rendered"]
    if rendered is not None:
        rendered.input_fp["path"] = str(item.input)  # as the local loop journals it
        if writer is not None:  # the worker read a copy: the size and time are the original's
            source = writer.batch.sources[index]
            rendered.input_fp.update(size=source.size, mtime_ns=source.mtime_ns)
    if result["error"] is not None:  # named by the absolute path the worker read; say it as given
        item.status = "failed"
        item.error = result["error"].replace(result["input"], str(item.input))
        return index
    start = time.perf_counter()
    with failures_recorded(item):
        if writer is not None:
            writer.commit(index, rendered, plan_id)
        else:
            commit(item, rendered, plan_id)
    item.seconds += time.perf_counter() - start
    return index


def connect(address: str | None, workers: int | None) -> bool:
    """Join the cluster at `address`, or start a local Ray; returns whether it was started
    here (and is to be shut down). A Ray this process already joined is used as it is."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    check_address(address)
    if address and address != "auto":
        check_reachable(address)  # else Ray retries an address where nothing answers without end
    local = {} if address else {"num_cpus": max(os.cpu_count() or 1, workers or 0)}
    try:
        # log_to_driver off: the workers print nothing of restorer's (their warnings come back
        # with the results), and what Ray would forward lands on stdout, where --json reports.
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, logging_level=logging.WARNING,
                 log_to_driver=False, **local)
    except (ConnectionError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        where = f"join the Ray cluster at {address}" if address else "start a local Ray"
        raise ClusterError(f"--engine ray: cannot {where}: {first}{auth_hint(address)}") from None
    quiet_ray_data()
    return True


def auth_hint(address: str | None) -> str:
    """What to try when joining failed and token authentication may be why: `ray start` turns
    it on by default since Ray 2.59 (the token in ~/.ray/auth_token), a driver only with
    RAY_AUTH_MODE=token."""
    if not address or os.environ.get("RAY_AUTH_MODE"):
        return ""
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        return ""
    return " (if the cluster uses token authentication, as `ray start` does by default: set RAY_AUTH_MODE=token)"


def check_address(address: str | None) -> None:
    """An --address restorer can join (none, auto, HOST:PORT), else ClusterError; no network."""
    if not address or address == "auto":
        return
    if address.startswith("ray://"):
        # A Ray Client driver cannot run Ray Data's streaming executor (Ray 2.60: the job fails
        # before its actors start); a driver on a node of the cluster can.
        raise ClusterError(f"--address {address}: Ray Data does not run through Ray Client (ray://); run restorer-cli "
                           "on a node of the cluster with --address auto, or submit it there with "
                           "`ray job submit --address http://HEAD:8265 -- restorer-cli ...`")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address}: expected auto or HOST:PORT")


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Something answers at HOST:PORT, else ClusterError."""
    import socket

    check_address(address)
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"--address {address}: nothing answers at {host}:{port} ({e.strerror or e})") from None


def quiet_ray_data() -> None:
    """No Ray Data progress bars or start-up lines: restorer reports progress and failures itself."""
    import logging

    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Nor its tracebacks: an image whose worker died on every try is reported, named, by restorer.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def pool_size(workers: int | None, gpus_per_worker: float, images: int, on_note=None) -> int:
    """How many actors: as asked, else what the cluster holds (its CPUs, or its GPUs shared
    gpus_per_worker each), never more than the images nor than fit (which would wait forever)."""
    import ray

    quiet_ray_data()
    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        fits = int(resources.get("GPU", 0) / gpus_per_worker + 1e-9)
        what = f"{resources.get('GPU', 0):g} GPUs at {gpus_per_worker:g} per worker"
    else:
        fits = int(resources.get("CPU", 1))
        what = f"{resources.get('CPU', 0):g} CPUs"
    if fits < 1:
        raise ClusterError(f"--engine ray: the Ray cluster has no room for one worker ({what})")
    size = workers or fits
    if size > fits:
        if on_note:
            on_note(f"--workers {size}: the Ray cluster holds {fits} ({what}); using {fits}")
        size = fits
    return max(1, min(size, images))


def plan_models(plan: Plan) -> list[str]:
    """The catalog ids a plan runs (a target size's per-scale steps and what each needs,
    e.g. a pipeline's parts or a text encoder, included); built-in operators need no files."""
    from restorer.zoo.catalog import load_catalog

    catalog = load_catalog()
    steps = [s for step in plan.steps for s in (step, *step.by_scale.values())]
    todo, seen = [s.model for s in steps], []
    while todo:
        model = todo.pop()
        if model in seen or model not in catalog or catalog.get(model).builtin:
            continue
        seen.append(model)
        todo += list(catalog.get(model).needs)
    return sorted(seen)


def pack_store(plan: Plan) -> dict[str, bytes]:
    """The files of this machine's store the plan's models run from (their folders, ONNX
    files and records) and the user's catalog entries, by path in the store."""
    from restorer.zoo.home import home

    root = home()
    paths = [root / "catalog.toml"]
    for model in plan_models(plan):
        paths += sorted((root / "models" / model).rglob("*"))
        paths += sorted((root / "onnx").glob(f"{model}.*")) if (root / "onnx").is_dir() else []
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in paths if p.is_file()}


def unpack_store(files: dict[str, bytes]) -> Path:
    """A worker's own model store, filled with what the driver shipped; RESTORER_HOME points
    to it for the rest of the worker's life."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="restorer-store-"))
    for name, data in files.items():
        path = (root / name).resolve()
        if root.resolve() not in path.parents:  # a name from the driver; still, never outside the store
            raise ValueError(f"shipped store file {name!r} points outside the store")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.environ["RESTORER_HOME"] = str(root)
    return root


class RestoreWorker:
    """One Ray actor: a RunnerCache built once, then whole images through loop.render."""

    def __init__(self, plan: Plan, output: Output, store: list | None = None, sources: list | None = None):
        from restorer.run.loader import RunnerCache

        if store is not None:
            import ray

            unpack_store(ray.get(store[0]))

        self.plan, self.output, self.sources = plan, output, sources
        self.cache = RunnerCache()

    def __call__(self, row: dict) -> dict:
        import tempfile

        from restorer.run.context import Context

        warnings: list[str] = []
        rendered = None
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="restorer-input-") as copies:
            if "tree" in row:  # a URL batch: a local copy of the input, the output named below the destination
                item = Item(Path(copies) / PurePosixPath(row["path"]).name, PurePosixPath(row["output"]))
                with failures_recorded(item):
                    fetch(self.sources[row["tree"]], row["path"], Path(copies), row["input"])
            else:
                item = Item(Path(row["input"]), Path(row["output"]))
            crash_for_test(item.input)
            if item.status == "pending":
                with failures_recorded(item):
                    ctx = Context(self.plan.device, self.plan.tile, cache=self.cache, on_note=warnings.append)
                    rendered = render(item, self.plan, ctx, self.output)
            if item.error:  # named by the copy the worker read: the input's own name
                item.error = item.error.replace(str(item.input), row["input"])
        result = {"index": row["index"], "input": row["input"], "rendered": rendered,
                  "error": item.error if item.status == "failed" else None, "steps": item.steps,
                  "notes": item.notes, "warnings": warnings, "seconds": time.perf_counter() - start}
        return {"index": row["index"], "result": pickle.dumps(result)}


def crash_for_test(path: Path) -> None:
    """The fault-injection hook of the tests: RESTORER_TEST_CRASH_ONCE=<file name> kills the
    worker process the first time it is given that file (once across processes: a marker in
    RESTORER_TEST_CRASH_DIR). Does nothing unless both are set."""
    name, folder = os.environ.get("RESTORER_TEST_CRASH_ONCE"), os.environ.get("RESTORER_TEST_CRASH_DIR")
    if not name or not folder or path.name != name:
        return
    try:
        fd = os.open(Path(folder) / f"crashed-{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(1)
