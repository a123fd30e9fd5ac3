"""Fetching a model's files: resume with Range requests, mirrors, checksums, archives.

Downloads come from the catalog's URL, or from a mirror: `download(..., base_url=...)` or the
RESTORER_MIRROR environment variable, which serves each file under the last path segment
of its official URL (`<mirror>/<file name>`).

Each host is fetched with the library made for it, and restorer's own checksum check and
atomic install are wrapped around all of them:
  - Hugging Face `.../<repo>/resolve/<rev>/<path>` URLs: huggingface_hub (resume; the host
    from HF_ENDPOINT when set, e.g. a mirror; HF_TOKEN for gated repos);
  - Google Drive *file* links: gdown (the virus-scan confirmation page of large files,
    resume); RESTORER_DRIVE_BASE sends its requests to another base URL (a test server);
  - anything else (GitHub releases, mirrors): plain HTTP with Range resume (`fetch`).
Drive folder links, Baidu and login-only pages stay "save it by hand, then models add"."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import unquote, urlparse

from restorer.zoo.catalog import (  # noqa: F401 - can_download, drive_file_id: used by tests and callers
    DRIVE_HOSTS,
    Catalog,
    FileSpec,
    ModelSpec,
    can_download,
    drive_file_id,
    install_hint,
)
from restorer.zoo.install import (
    _extract,
    _place,
    _scratch,
    check_folder,
    check_folder_file,
    install_folder,
    safe_members,
    sha256_of,
)
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


HF_HOSTS = ("huggingface.co", "hf.co")


def hf_parts(url: str) -> tuple[str, str, str, str] | None:
    """(endpoint, repo id, revision, file path) of a Hugging Face resolve URL, else None.
    The endpoint is HF_ENDPOINT when set (a mirror), else the URL's own scheme and host."""
    parsed = urlparse(url)
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/")
    hosts = set(HF_HOSTS) | ({urlparse(endpoint).netloc} if endpoint else set())
    if parsed.netloc not in hosts:
        return None
    parts = unquote(parsed.path).strip("/").split("/")
    if "resolve" not in parts:
        return None
    i = parts.index("resolve")
    if i < 1 or len(parts) < i + 3:
        return None
    repo = "/".join(parts[:i])
    for prefix in ("models/",):
        repo = repo.removeprefix(prefix)
    return endpoint or f"{parsed.scheme}://{parsed.netloc}", repo, parts[i + 1], "/".join(parts[i + 2:])


def by_hand(spec: ModelSpec, f: FileSpec) -> str:
    where = f.url or "its authors' page"
    return (f"model '{spec.id}': {f.name} cannot be downloaded automatically; "
            f"download it in a browser from {where} then run: "
            f"restorer-cli models add {f.name} --id {spec.id}")


# How resolvers and HTTP libraries word "no such host" and "nobody listens" (glibc, musl,
# macOS, Windows, urllib3, httpx, the Rust client behind hf_xet, curl).
UNREACHABLE_WORDS = (
    "name or service not known", "nodename nor servname", "temporary failure in name resolution",
    "no address associated with hostname", "name does not resolve", "getaddrinfo failed",
    "failed to lookup address", "failed to resolve", "could not resolve host", "dns error", "no such host",
    "nameresolutionerror", "connection refused",
)


def _causes(error: BaseException) -> list[BaseException]:
    """`error` and what it wraps: reason (urllib), __cause__ / __context__, and exceptions
    carried in args (requests wraps urllib3's error that way), breadth first."""
    seen, queue = [], [error]
    while queue and len(seen) < 16:
        e = queue.pop(0)
        if any(e is s for s in seen):
            continue
        seen.append(e)
        reason = getattr(e, "reason", None)
        queue += [c for c in (reason, e.__cause__, e.__context__, *getattr(e, "args", ()))
                  if isinstance(c, BaseException)]
    return seen


def _unreachable(url: str, error) -> StoreError | None:
    """A one-line error when `error` says the host could not be reached at all (DNS, refused).
    Every wrapper around a download (urllib, requests, httpx, huggingface_hub, gdown) is
    looked through, so a DNS failure is never reported as an interrupted transfer."""
    import socket

    chain = _causes(error)
    text = " ".join(str(c) for c in chain).lower()
    if any(isinstance(c, (socket.gaierror, ConnectionRefusedError)) for c in chain) or any(
            k in text for k in UNREACHABLE_WORDS):
        host = urlparse(url).netloc or url
        reason = next((str(c) for c in chain if isinstance(c, (socket.gaierror, ConnectionRefusedError))), str(error))
        reason = reason.splitlines()[0] if reason.strip() else "no connection"
        return StoreError(f"cannot reach {host}: {reason}")
    return None


def _resolve_host(url: str) -> None:
    """Fail at once, in one line, when the host's name does not resolve (the host libraries
    retry a DNS failure with back-off for half a minute before giving up)."""
    import socket

    parsed = urlparse(url)
    if not parsed.hostname:
        return
    try:
        socket.getaddrinfo(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
    except socket.gaierror as e:
        raise StoreError(f"cannot reach {parsed.netloc}: {e}") from None


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
            unreachable = _unreachable(url, e)
            if unreachable is not None:
                raise unreachable from None
            reason = getattr(e, "reason", None) or e
            last_error = f"{reason}"
    raise StoreError(f"download of {url} interrupted ({last_error}); run the same command again to resume")


def download(spec: ModelSpec, progress: ProgressCallback | None = None, *, base_url: str | None = None,
             catalog: Catalog | None = None) -> list[tuple[str, Path]]:
    """Fetch a model's files into the store; returns (model id, path) of what was installed.

    Each file is checked before it is moved into place: its sha256 when the catalog knows
    it, else its tensors against the entry's signature; on a mismatch nothing is kept.
    An archive installs every catalog entry it holds (they share its URL). Files behind a
    page a person must open (a Drive folder, Baidu) are not tried: the error says what to do.
    Hugging Face files go through huggingface_hub, Drive file links through gdown, the rest
    through plain HTTP (`fetch`); a mirror (`base_url`, RESTORER_MIRROR) is plain HTTP.
    """
    catalog = _catalog(catalog)
    if not spec.released:
        raise StoreError(install_hint(spec))
    if spec.builtin or spec.is_pipeline:
        raise StoreError(f"model '{spec.id}' has nothing to download" +
                         (f"; it needs: {', '.join(spec.needs)}" if spec.needs else ""))
    if not spec.files:
        raise StoreError(f"model '{spec.id}' lists no files in the catalog")
    if spec.generative:
        return [(spec.id, download_folder(spec, progress, base_url=base_url))]
    installed: list[tuple[str, Path]] = []
    for f in spec.files:
        if (model_dir(spec) / f.name).is_file():
            continue
        if not can_download(f):
            raise StoreError(by_hand(spec, f))
        url = mirror_url(f.url, base_url)
        part = _fetch_any(url, mirrored=url != f.url, progress=progress)
        try:
            if f.member:
                installed += _install_from_archive(part, f.url, catalog, label=url, required=spec.id)
            else:
                _check_download(part, spec, f, url)
                installed.append((spec.id, _place(part, spec, f, origin=f.url, move=True)))
        finally:
            part.unlink(missing_ok=True)
    return installed


def download_folder(spec: ModelSpec, progress: ProgressCallback | None = None, *,
                    base_url: str | None = None) -> Path:
    """A diffusers model folder: each file fetched (resumed), checked and kept in a staging
    folder under <store>/downloads, so an interrupted download goes on from the files it
    has; the folder enters the store whole once every file is there and checked. A mirror
    serves the files under their paths in the folder (`<mirror>/unet/config.json`)."""
    staging = home() / "downloads" / f"{spec.id}.folder"
    total = spec.size
    have = 0
    for f in spec.files:
        dest = staging / f.name
        if dest.is_file():
            have += dest.stat().st_size
            continue
        if not can_download(f):
            raise StoreError(by_hand(spec, f))
        base = base_url or os.environ.get("RESTORER_MIRROR", "")
        url = f"{base.rstrip('/')}/{f.name}" if base else f.url

        def file_progress(done: int, size: int, before: int = have) -> None:
            if progress:
                progress(before + done, max(total, before + size))

        part = _fetch_any(url, mirrored=url != f.url, progress=file_progress)
        try:
            _check_download(part, spec, f, url)
            try:
                check_folder_file(part, f.name)
            except StoreError as e:
                raise StoreError(f"{e} (from {url}); nothing was kept") from None
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
        have += dest.stat().st_size
    names = check_folder(staging, spec)
    target = install_folder(spec, staging, names, origin=spec.files[0].url.rsplit("/", 1)[0], move=True)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def _fetch_any(url: str, *, mirrored: bool, progress: ProgressCallback | None) -> Path:
    """Fetch `url` into a file of our own under <store>/downloads, with the library made for
    its host; the caller checks it and moves it into place."""
    if not mirrored:
        hf = hf_parts(url)
        if hf is not None:
            return fetch_hf(url, *hf, progress=progress)
        file_id = drive_file_id(url)
        if file_id is not None:
            return fetch_drive(url, file_id, progress=progress)
    return fetch(url, _part_path(url), progress=progress)


def fetch_hf(url: str, endpoint: str, repo_id: str, revision: str, filename: str, *,
             progress: ProgressCallback | None = None) -> Path:
    """One file of a Hugging Face repo through huggingface_hub, into <store>/downloads/hf
    (its own resume of an interrupted transfer); the token is HF_TOKEN's, when set."""
    try:
        from huggingface_hub import errors as hf_errors
        from huggingface_hub import hf_hub_download
    except ImportError:  # the library is a dependency; fall back to plain HTTP without it
        return fetch(url, _part_path(url), progress=progress)
    local_dir = home() / "downloads" / "hf" / hashlib.sha1(f"{endpoint}/{repo_id}@{revision}".encode()).hexdigest()[:10]
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None
    _resolve_host(endpoint)
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would print a second line for the same failure
    try:
        path = hf_hub_download(repo_id, filename, revision=revision, endpoint=endpoint, local_dir=local_dir,
                               token=token if token else False)
    except (hf_errors.GatedRepoError, hf_errors.RepositoryNotFoundError) as e:
        raise StoreError(_hf_denied(url, getattr(getattr(e, "response", None), "status_code", None))) from None
    except hf_errors.LocalEntryNotFoundError as e:  # the Hub could not be reached (and no cached copy)
        unreachable = _unreachable(endpoint, e)
        if unreachable is not None:
            raise unreachable from None
        host = urlparse(endpoint).netloc
        cause = e.__cause__ or e.__context__
        raise StoreError(f"cannot reach {host}: {str(cause or e).splitlines()[0] if str(cause or e) else 'no connection'}") from None
    except hf_errors.EntryNotFoundError:
        raise StoreError(f"download failed: HTTP 404 from {url}") from None
    except hf_errors.HfHubHTTPError as e:
        code = getattr(getattr(e, "response", None), "status_code", None)
        if code in (401, 403):
            raise StoreError(_hf_denied(url, code)) from None
        raise StoreError(f"download failed: HTTP {code} from {url}") from None
    except Exception as e:  # connection errors come as httpx / LocalEntryNotFound errors
        unreachable = _unreachable(endpoint, e)
        if unreachable is not None:
            raise unreachable from None
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise StoreError(f"download of {url} interrupted ({first}); run the same command again to resume") from None
    finally:
        hub_log.setLevel(level)
    path = Path(path)
    if progress:
        size = path.stat().st_size
        progress(size, size)
    return path


def _hf_denied(url: str, code) -> str:
    how = ("HF_TOKEN is set but was refused: check that it may read this repo and that its licence was accepted"
           if os.environ.get("HF_TOKEN") else
           "the repo may be gated or private: accept its licence on huggingface.co, then set HF_TOKEN to an access token")
    return f"download failed: HTTP {code or 401} from {url}; {how}"


def _drive_session_hook(base: str):
    """A context in which gdown's requests to Google's hosts go to `base` instead (a test
    server or a mirror speaking Drive's protocol: RESTORER_DRIVE_BASE)."""
    import contextlib

    from requests.adapters import HTTPAdapter

    class Redirect(HTTPAdapter):
        def send(self, request, **kwargs):
            parsed = urlparse(request.url)
            request.url = base.rstrip("/") + parsed.path + (f"?{parsed.query}" if parsed.query else "")
            return super().send(request, **kwargs)

    @contextlib.contextmanager
    def hook():
        import importlib

        gd = importlib.import_module("gdown.download")  # the module (gdown.download is also a function)

        original = gd._get_session

        def session(**kwargs):
            sess, cookies = original(**kwargs)
            for host in DRIVE_HOSTS:
                sess.mount(f"https://{host}/", Redirect())
            return sess, cookies

        gd._get_session = session
        try:
            yield
        finally:
            gd._get_session = original

    return hook()


def fetch_drive(url: str, file_id: str, *, progress: ProgressCallback | None = None) -> Path:
    """A Google Drive file through gdown (it answers the confirmation page of large files),
    into a part file of ours that a later call resumes."""
    import contextlib

    try:
        import gdown
    except ImportError:
        raise StoreError(f"gdown is needed to download from Google Drive ({url}): pip install gdown") from None
    part = _part_path(f"https://drive.google.com/uc?id={file_id}")
    part.parent.mkdir(parents=True, exist_ok=True)
    base = os.environ.get("RESTORER_DRIVE_BASE", "")
    hook = _drive_session_hook(base) if base else contextlib.nullcontext()
    _resolve_host(base or "https://drive.google.com")
    total = 0

    def on_chunk(done: int, size: int | None) -> None:
        nonlocal total
        total = size or total
        if progress:
            progress(done, total)

    try:
        with hook:
            gdown.download(id=file_id, output=str(part), quiet=True, resume=True, progress=on_chunk,
                           use_cookies=False, retries=2, timeout=60)
    except Exception as e:
        unreachable = _unreachable(base or "https://drive.google.com", e)
        if unreachable is not None:
            raise unreachable from None
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        if type(e).__name__ == "FileURLRetrievalError":
            raise StoreError(f"Google Drive would not hand out {url} ({first}); download it in a browser, "
                             f"then run: restorer-cli models add FILE --id ID") from None
        raise StoreError(f"download of {url} interrupted ({first}); run the same command again to resume") from None
    if not part.is_file():
        raise StoreError(f"download of {url} produced no file")
    return part


def _check_download(path: Path, spec: ModelSpec, f: FileSpec, url: str) -> None:
    if f.sha256:
        got = sha256_of(path)
        if got != f.sha256.lower():
            path.unlink(missing_ok=True)
            raise StoreError(f"checksum mismatch for {f.name} from {url}: expected sha256 {f.sha256}, "
                             f"got {got}; nothing was kept")
    elif f.name.lower().endswith(WEIGHT_SUFFIXES) and _checkable(spec):
        try:
            shapes = tensor_shapes(path, spec.wrapper_key, spec.key_prefix)
        except StoreError as e:
            path.unlink(missing_ok=True)
            why = str(e).removeprefix(f"{path.name}: ")  # the reader names its temporary file
            raise StoreError(f"{f.name} from {url} is not a usable checkpoint ({why}); nothing was kept") from None
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

