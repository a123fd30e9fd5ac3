"""Batches whose inputs or outputs are URLs (s3://, gs://, hdfs://...): read and written
through pyarrow's filesystem layer, the one Ray Data reads with; `--engine ray` only.

The same rules as a folder batch (restorer.batch.files, restorer.batch.journal), kept with
what object stores allow:
- folders are mirrored under the destination; an output never replaces an input, two
  inputs never share an output;
- each output is written whole or not at all: one PUT of the complete object on an object
  store (it is visible only once complete), a temporary name then a rename elsewhere;
- the journal is a set of objects under `<destination>/.restorer-journal/`, one per run
  (a new one every SEGMENT_RECORDS records). An object cannot be appended to, so a run
  rewrites its own segment, with the new output's record (its size and sha256), before it
  writes that output: every output restorer put there has a record, even if the run was
  killed between the two.
- a rerun skips an output whose record says this plan made it from this input (same size
  and modification time) and whose size matches; an output restorer has no record of, or
  whose size changed since, is never overwritten without --overwrite; one that is to be
  redone (another plan, a changed input) is read back first and replaced only if its
  sha256 is still the one restorer wrote.

Only the driver writes (outputs and journal); workers read their input. pyarrow comes with
restorer[cluster] (ray[data]); it is imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from restorer.batch import files, journal
from restorer.batch.files import Item
from restorer.io import imaging

JOURNAL_FOLDER = ".restorer-journal"
SEGMENT_RECORDS = 500  # records per journal object: each write rewrites one object, so keep it small
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str | os.PathLike) -> bool:
    return bool(_SCHEME.match(str(location)))


def location(text: str) -> str | Path:
    """A command-line location: a URL as given (a Path would fold its '//'), else a Path."""
    return text if is_url(text) else Path(text)


class RemoteError(Exception):
    """A URL that cannot be opened, listed or written; str() is one line naming it."""


@dataclass
class Tree:
    """One place files are read from or written to: a filesystem and a path in it, and how
    its files are named for people (the URL, or the local path)."""

    fs: object  # pyarrow.fs.FileSystem (picklable: workers get the input's)
    root: str  # path within fs, no trailing '/'
    url: str  # how it was given, no trailing '/'

    @classmethod
    def open(cls, where: str | Path) -> Tree:
        try:
            import pyarrow.fs as pafs
        except ImportError:
            raise RemoteError(f"{where}: URLs are read through pyarrow: pip install 'restorer[cluster]'") from None

        if not is_url(where):
            path = os.path.abspath(where)
            return cls(pafs.LocalFileSystem(), Path(path).as_posix(), path)
        url = str(where).rstrip("/")
        try:
            fs, root = pafs.FileSystem.from_uri(url)
        except (OSError, ValueError) as e:  # pyarrow's errors derive from these
            raise RemoteError(f"{url}: cannot open: {_first_line(e)}") from None
        return cls(fs, root.rstrip("/"), url.split("?", 1)[0])

    def name(self, rel: str) -> str:
        """How a file below the root is named in reports: the URL, or the local path."""
        return f"{self.url}/{rel}" if rel else self.url

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    @property
    def local(self) -> bool:
        return type(self.fs).__name__ == "LocalFileSystem"


@dataclass
class Source:
    """Where a worker reads an item's input, and what the driver saw of it."""

    tree: int  # index into RemoteBatch.inputs
    path: str  # in that tree's filesystem
    size: int
    mtime_ns: int | None


@dataclass
class RemoteBatch:
    """The items of a URL batch (input and output named by URL or path, as strings) and
    where each is read from and written to."""

    items: list[Item]
    inputs: list[Tree]
    dest: Tree
    sources: list[Source]  # one per item
    outputs: list[str] = field(default_factory=list)  # per item: its output's path below dest.root
    # Items whose existing output is to be redone: the sha256 of each output restorer recorded
    # under that name (settle fills it; the writer checks the output against it before replacing).
    written: dict[int, set[str]] = field(default_factory=dict)


def discover(inputs: list[str | Path], dest: str | Path, *, recursive: bool, fmt: str, suffix: str,
             mask_local: bool = False) -> RemoteBatch:
    """Input files (URLs or local paths, listed through pyarrow) paired with their outputs
    below `dest`; folders are mirrored, as files.discover does. Raises RemoteError."""
    import pyarrow.fs as pafs

    out_tree = Tree.open(dest)
    batch = RemoteBatch([], [], out_tree, [])
    folders = 0
    written: set[str] | None = None  # what the destination's journal says restorer wrote there
    found: list[tuple[int, pafs.FileInfo, str, str]] = []  # tree, file, output below its base, input's name
    for where in inputs:
        tree = Tree.open(where)
        batch.inputs.append(tree)
        t = len(batch.inputs) - 1
        info = _info(tree, tree.root)
        if info.type == pafs.FileType.NotFound:
            raise RemoteError(f"{tree.url}: no such file or folder")
        if info.type == pafs.FileType.File:
            found.append((t, info, PurePosixPath(info.path).name, tree.url))
            continue
        folders += 1
        for f in sorted(_listing(tree, tree.root, recursive), key=lambda f: f.path):
            rel = f.path[len(tree.root) + 1:]
            name = PurePosixPath(rel).name
            if (f.type != pafs.FileType.File or PurePosixPath(name).suffix.lower() not in files.IMAGE_SUFFIXES
                    or name.startswith(imaging.TEMP_PREFIX) or rel.split("/")[0] == JOURNAL_FOLDER):
                continue
            if _place(tree) == _place(out_tree) and _below(f.path, out_tree.root):
                if out_tree.root != tree.root:
                    continue  # our own outputs of an earlier run, inside the input tree
                if written is None:
                    written = set(read_journal(out_tree))
                if rel in written:
                    continue  # our own outputs, written beside their inputs
            found.append((t, f, PurePosixPath(tree.root).name + "/" + rel, tree.name(rel)))
    for t, info, rel, name in found:
        if folders <= 1 and "/" in rel and name != batch.inputs[t].url:
            rel = rel.split("/", 1)[1]  # one folder: mirrored as the destination itself
        out_rel = str(files.output_path(PurePosixPath(rel), fmt, suffix, mask_local))
        item = Item(name, out_tree.name(out_rel))
        if mask_local:
            item.notes.extend(filter(None, [files.mask_local_note(PurePosixPath(info.path), PurePosixPath(out_rel), fmt)]))
        batch.items.append(item)
        batch.sources.append(Source(t, info.path, info.size, info.mtime_ns))
        batch.outputs.append(out_rel)
    return batch


def settle(batch: RemoteBatch, plan_fp: str, *, overwrite: bool) -> list[int]:
    """files.prepare and journal.decide for a URL batch: outputs that would replace an input
    or that several inputs share are refused; existing outputs skipped, redone or refused by
    the destination's journal (see the module's docstring). Reads only; returns the indices
    of the items it settled."""
    items = batch.items
    before = [item.status for item in items]
    dest = batch.dest
    inputs = {(_place(batch.inputs[s.tree]), s.path) for s in batch.sources}
    for i, item in enumerate(items):
        if (_place(dest), dest.path(batch.outputs[i])) in inputs:
            item.status, item.error = "failed", (f"the output would overwrite an input ('{item.output}'); "
                                                 "choose another -o destination or a --suffix")
    for problem, group in files.collisions(items):
        for item in group:
            if item.status == "pending":
                item.status, item.error = "failed", problem
    if not overwrite:
        present = {f.path: f.size for f in _listing(dest, dest.root, recursive=True)}
        records = read_journal(dest)
        for i, item in enumerate(items):
            size = present.get(dest.path(batch.outputs[i]))
            if item.status != "pending" or size is None:
                continue
            mine = records.get(batch.outputs[i], [])
            journal.apply_verdict(item, _verdict(mine, size, batch.sources[i], plan_fp))
            if item.status == "pending":  # to be redone
                batch.written[i] = {r["output"].get("sha256") for r in mine}
    return [i for i, item in enumerate(items) if item.status != before[i]]


def _verdict(records: list[dict], size: int, source: Source, plan_fp: str) -> str:
    if not records:
        return "refuse: exists and was not written by restorer"
    mine = next((r for r in reversed(records) if r["output"].get("size") == size), None)
    if mine is None:
        return "refuse: was changed since restorer wrote it"
    if mine.get("plan") != plan_fp:
        return f"the output was made with another plan ({mine.get('steps', '?')})"
    given = mine.get("input", {})
    if given.get("size") != source.size or given.get("mtime_ns") != source.mtime_ns:
        return "the input changed since"
    return "skip"


def read_journal(dest: Tree) -> dict[str, list[dict]]:
    """The destination's records by output name (its path below the destination), oldest
    first; unreadable objects and torn lines are passed over."""
    import pyarrow.fs as pafs

    by_name: dict[str, list[dict]] = {}
    for f in sorted(_listing(dest, dest.path(JOURNAL_FOLDER), recursive=False), key=lambda f: f.path):
        if f.type != pafs.FileType.File or not f.path.endswith(".jsonl"):
            continue
        try:
            with dest.fs.open_input_stream(f.path) as stream:
                text = stream.read().decode("utf-8", "replace")
        except OSError:
            continue
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("name"), str) and isinstance(record.get("output"), dict):
                by_name.setdefault(record["name"], []).append(record)
    return by_name


class Writer:
    """The driver's writes to the destination: the journal segment of this run, then each
    output whole. Raises imaging.ImageWriteError naming what could not be written."""

    def __init__(self, batch: RemoteBatch):
        self.batch = batch
        self.dest = batch.dest
        self.records: list[str] = []
        self.segment = ""
        self._new_segment()

    def _new_segment(self) -> None:
        self.records = []
        self.segment = self.dest.path(f"{JOURNAL_FOLDER}/{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl")

    def check(self) -> str | None:
        """Try a write where the journal goes: one line saying why not, or None."""
        probe = self.dest.path(f"{JOURNAL_FOLDER}/probe-{uuid.uuid4().hex[:8]}")
        try:
            self._put(probe, b"")
            self.dest.fs.delete_file(probe)
        except OSError as e:
            return f"{self.dest.url}: cannot write: {_first_line(e)}"
        return None

    def commit(self, index: int, rendered, plan_id) -> None:
        """What a worker rendered for item `index`: journaled, then written (stage images first)."""
        from restorer.batch.loop import stage_images  # not at the top: the CLI's parser imports this module

        item, rel = self.batch.items[index], self.batch.outputs[index]
        for stage_path, image in stage_images(PurePosixPath(rel), rendered.stages):
            self.write(str(stage_path), imaging.encode(image, "png", 95))
        entry = journal.record(rel, "writing", rendered.input_fp, plan_id.fingerprint, plan_id.summary,
                               journal.output_fingerprint(rendered.data))
        if len(self.records) >= SEGMENT_RECORDS:
            self._new_segment()
        self.records.append(json.dumps(entry))
        try:
            self._put(self.segment, ("\n".join(self.records) + "\n").encode())
        except OSError as e:
            self.records.pop()
            raise imaging.ImageWriteError(self.dest.url + "/" + JOURNAL_FOLDER, _first_line(e)) from None
        if index in self.batch.written:
            self._check_still_ours(index)
        self.write(rel, rendered.data)
        item.status = "done"

    def write(self, rel: str, data: bytes) -> None:
        try:
            self._put(self.dest.path(rel), data)
        except OSError as e:
            raise imaging.ImageWriteError(self.dest.name(rel), _first_line(e)) from None

    def _put(self, path: str, data: bytes) -> None:
        """`data` as `path`, whole or not at all: an object store shows an object only once
        its upload completes; a filesystem with renames gets a temporary name first."""
        fs = self.dest.fs
        parent = path.rpartition("/")[0]
        if _renames(fs):
            fs.create_dir(parent, recursive=True)
            tmp = f"{parent}/.{path.rpartition('/')[2]}.{uuid.uuid4().hex[:8]}{files.TEMP_SUFFIX}"
            try:
                with fs.open_output_stream(tmp) as out:
                    out.write(data)
                fs.move(tmp, path)
            finally:
                if _info_or_none(self.dest, tmp) is not None:
                    fs.delete_file(tmp)
        else:
            with fs.open_output_stream(path) as out:
                out.write(data)

    def _check_still_ours(self, index: int) -> None:
        """Before an output restorer wrote is replaced (another plan, a changed input): it is
        read back, and replaced only if it is still what restorer wrote."""
        item, rel = self.batch.items[index], self.batch.outputs[index]
        try:
            with self.dest.fs.open_input_stream(self.dest.path(rel)) as stream:
                digest = hashlib.sha256(stream.read()).hexdigest()
        except OSError:
            return  # gone since: nothing to protect
        if digest not in self.batch.written[index]:
            raise imaging.ImageWriteError(item.output, "was changed since restorer wrote it; not overwritten; "
                                          "use --overwrite")


def fetch(fs, path: str, into: Path, name: str) -> Path:
    """A worker's copy of an input, under its own name in folder `into` (formats are told by
    the extension). Raises imaging.ImageReadError naming it as `name`."""
    local = into / PurePosixPath(path).name
    try:
        with fs.open_input_stream(path) as stream, open(local, "wb") as out:
            while chunk := stream.read(1 << 22):
                out.write(chunk)
    except OSError as e:
        raise imaging.ImageReadError(name, _first_line(e)) from None
    return local


def _listing(tree: Tree, path: str, recursive: bool) -> list:
    import pyarrow.fs as pafs

    try:
        return tree.fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except OSError as e:
        raise RemoteError(f"{tree.name(path[len(tree.root) + 1:])}: cannot list: {_first_line(e)}") from None


def _info(tree: Tree, path: str):
    try:
        return tree.fs.get_file_info(path)
    except OSError as e:
        raise RemoteError(f"{tree.url}: cannot read: {_first_line(e)}") from None


def _info_or_none(tree: Tree, path: str):
    import pyarrow.fs as pafs

    try:
        info = tree.fs.get_file_info(path)
    except OSError:
        return None
    return None if info.type == pafs.FileType.NotFound else info


def _renames(fs) -> bool:
    """Whether outputs go through a temporary name (a filesystem whose rename is atomic)."""
    return type(fs).__name__ in ("LocalFileSystem", "HadoopFileSystem")


def _place(tree: Tree) -> str:
    """Which filesystem a tree is on (its paths start with the bucket), to compare paths across trees."""
    return "local" if tree.local else tree.url.split("://", 1)[0]


def _below(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
