"""Fetching a model's files: resume with Range requests, mirrors, checksums, archives.

Downloads come from the catalog's URL, or from a mirror: `download(..., base_url=...)` or the
RESTORER_MIRROR environment variable, which serves each file under the last path segment
of its official URL (`<mirror>/<file name>`)."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import unquote, urlparse

from restorer.zoo.catalog import Catalog, FileSpec, ModelSpec, install_hint
from restorer.zoo.install import _extract, _place, _scratch, safe_members, sha256_of
from restorer.zoo.layout import (
    CHUNK,
    WEIGHT_SUFFIXES,
    StoreError,
    _catalog,
    home,
    model_dir,
)
from restorer.zoo.recognise import _checkable, _member_matches, compare, signature
from restorer.zoo.weights import _lenient, tensor_shapes

log = logging.getLogger("restorer")

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total or 0 when unknown)


def mirror_url(url: str, base_url: str | None = None) -> str:
    """`url`, or its file under a mirror (`base_url` or RESTORER_MIRROR) when one is set."""
    base = base_url or os.environ.get("RESTORER_MIRROR", "")
    if not base:
        return url
    return base.rstrip("/") + "/" + PurePosixPath(unquote(urlparse(url).path)).name


def _part_path(url: str) -> Path:
    name = PurePosixPath(unquote(urlparse(url).path)).name or "download"
    key = hashlib.sha1(url.encode()).hexdigest()[:10]
    return home() / "downloads" / f"{key}-{name}.part"


def fetch(url: str, part: Path, *, progress: ProgressCallback | None = None, attempts: int = 3,
          timeout: float = 60.0) -> Path:
    """Fetch `url` into `part`, resuming what is already there with a Range request;
    a transfer cut short is resumed up to `attempts` times, and kept for the next call."""
    import http.client
    import urllib.error
    import urllib.request

    part.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "restorer"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status != 206:
                    have = 0  # the server ignored the range: start over
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else 0
                with open(part, "ab" if have else "wb") as out:
                    done = have
                    if progress:
                        progress(done, total)
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
            if total and done < total:
                last_error = f"the connection closed at {done} of {total} bytes"
                continue
            return part
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to send: the part is complete
                return part
            raise StoreError(f"download failed: HTTP {e.code} {e.reason} from {url}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or e
            last_error = f"{reason}"
    raise StoreError(f"download of {url} interrupted ({last_error}); run the same command again to resume")


def download(spec: ModelSpec, progress: ProgressCallback | None = None, *, base_url: str | None = None,
             catalog: Catalog | None = None) -> list[tuple[str, Path]]:
    """Fetch a model's files into the store; returns (model id, path) of what was installed.

    Each file is checked before it is moved into place: its sha256 when the catalog knows
    it, else its tensors against the entry's signature; on a mismatch nothing is kept.
    An archive installs every catalog entry it holds (they share its URL). Files behind a
    page a person must open (Google Drive) are not tried: the error says what to do.
    """
    catalog = _catalog(catalog)
    if not spec.released:
        raise StoreError(install_hint(spec))
    if spec.builtin or spec.is_pipeline:
        raise StoreError(f"model '{spec.id}' has nothing to download" +
                         (f"; it needs: {', '.join(spec.needs)}" if spec.needs else ""))
    if not spec.files:
        raise StoreError(f"model '{spec.id}' lists no files in the catalog")
    installed: list[tuple[str, Path]] = []
    for f in spec.files:
        if (model_dir(spec) / f.name).is_file():
            continue
        if f.browser or not f.url:
            where = f.url or "its authors' page"
            raise StoreError(f"model '{spec.id}': {f.name} cannot be downloaded automatically; "
                             f"download it in a browser from {where} then run: "
                             f"restorer-cli models add {f.name} --id {spec.id}")
        url = mirror_url(f.url, base_url)
        part = fetch(url, _part_path(url), progress=progress)
        try:
            if f.member:
                installed += _install_from_archive(part, f.url, catalog, label=url, required=spec.id)
            else:
                _check_download(part, spec, f, url)
                installed.append((spec.id, _place(part, spec, f, origin=f.url, move=True)))
        finally:
            part.unlink(missing_ok=True)
    return installed


def _check_download(path: Path, spec: ModelSpec, f: FileSpec, url: str) -> None:
    if f.sha256:
        got = sha256_of(path)
        if got != f.sha256.lower():
            path.unlink(missing_ok=True)
            raise StoreError(f"checksum mismatch for {f.name} from {url}: expected sha256 {f.sha256}, "
                             f"got {got}; nothing was kept")
    elif f.name.lower().endswith(WEIGHT_SUFFIXES) and _checkable(spec):
        try:
            shapes = tensor_shapes(path, spec.wrapper_key)
        except StoreError as e:
            path.unlink(missing_ok=True)
            raise StoreError(f"{f.name} from {url} is not a usable checkpoint ({e}); nothing was kept") from None
        diff = compare(shapes, signature(spec), _lenient(spec))
        if diff:
            path.unlink(missing_ok=True)
            raise StoreError(f"{f.name} from {url} is not a checkpoint of '{spec.id}': {diff}; nothing was kept")


def _install_from_archive(archive_path: Path, url: str, catalog: Catalog, label: str,
                          required: str) -> list[tuple[str, Path]]:
    """Install the members of a downloaded archive that catalog entries name (by URL); a
    member missing from the archive is an error only for the entry that was asked for."""
    wanted = [(s, f) for s in catalog for f in s.files if f.url == url and f.member]
    out = []
    with zipfile.ZipFile(archive_path) as archive:
        members = safe_members(archive, label)
        for spec, f in wanted:
            if (model_dir(spec) / f.name).is_file():
                continue
            info = next((i for i in members if _member_matches(f.member, i.filename)), None)
            if info is None:
                if spec.id == required:
                    raise StoreError(f"{label}: the archive has no member {f.member} (for '{spec.id}')")
                log.warning("%s: the archive has no member %s (for '%s')", label, f.member, spec.id)
                continue
            with tempfile.TemporaryDirectory(dir=_scratch()) as tmp:
                member = _extract(archive, info, Path(tmp))
                _check_download(member, spec, f, f"{label}!{f.member}")
                out.append((spec.id, _place(member, spec, f, origin=f"{url}!{f.member}", move=True)))
    return out

