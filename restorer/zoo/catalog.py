"""The model zoo as data: models/catalog.toml read into ModelSpec objects."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from restorer.archs import ARCHS
from restorer.archs.requirements import Requirements
from restorer.zoo.home import home


@dataclass(frozen=True)
class FileSpec:
    name: str
    url: str = ""
    sha256: str = ""
    size: int = 0
    browser: bool = False  # the url is a page a person must open (Google Drive, Baidu)
    member: str = ""  # path inside an archive, when the file ships in one


@dataclass(frozen=True)
class ModelSpec:
    id: str
    title: str
    family: str
    tasks: tuple[str, ...]
    arch: str
    hparams: dict = field(default_factory=dict, hash=False, compare=False)
    scale: int = 1
    channels: int = 3
    input_range: tuple[float, float] = (0.0, 1.0)
    output_range: tuple[float, float] = (0.0, 1.0)
    pad_multiple: int = 1
    tile_multiple: int | None = None  # None: the architecture's own (restorer.archs.ARCHS)
    min_size: int | None = None
    pre_upscale: int = 1  # >1: the network restores a bicubic-upscaled input of this factor
    overlap: int = 16
    tile: int = 256
    rank: int = 50
    precisions: tuple[str, ...] = ("fp32",)
    licence: str = ""
    non_commercial: bool = False
    released: bool = True
    paper: str = ""
    manifest: str = ""
    wrapper_key: str = ""
    # The network's tensors carry this prefix in the checkpoint, beside others that are not the
    # network (RestoreFormer's Lightning checkpoints: "vqvae." and the training losses).
    key_prefix: str = ""
    notes: str = ""
    files: tuple[FileSpec, ...] = ()
    needs: tuple[str, ...] = ()  # other catalog ids this model needs (text encoder, parts)
    extra: dict = field(default_factory=dict, hash=False, compare=False)  # family-specific fields

    @property
    def builtin(self) -> bool:
        return self.arch == "builtin"

    @property
    def is_pipeline(self) -> bool:
        return self.arch == "pipeline"

    @property
    def generative(self) -> bool:
        """A diffusion pipeline (a folder of diffusers components) that invents detail."""
        return self.arch == "diffusers"

    @property
    def output_scale(self) -> int:
        """Output size / input size of a restore, counting the bicubic upscale a network that
        works on pre-interpolated input (`pre_upscale = N`) is fed."""
        return self.pre_upscale if self.pre_upscale > 1 else self.scale

    @property
    def requirements(self) -> Requirements:
        """What this network needs from the engine: its architecture's defaults, then this
        checkpoint's facts (scale, channels, padding, value range, precisions)."""
        values = dict(ARCHS[self.arch].needs) if self.arch in ARCHS else {}
        if self.generative:
            values.update(DIFFUSION_NEEDS, preferred_tile=self.tile)
        values.update(scale=self.output_scale, channels=self.channels, pad_multiple=max(1, self.pad_multiple),
                      overlap=self.overlap, input_range=self.input_range, output_range=self.output_range,
                      pre_upscale=self.pre_upscale, precisions=self.precisions)
        if self.tile_multiple is not None:
            values["tile_multiple"] = self.tile_multiple
        if self.min_size is not None:
            values["min_size"] = self.min_size
        return Requirements(**values)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


# A diffusion pipeline's UNet attends over the whole tile, and it was trained at one size (the
# catalog's `tile`): tiles stay that size. Activations per input pixel are large: the output
# is 16 pixels for each, decoded by a VAE with attention over the latents.
DIFFUSION_NEEDS = {"whole_tile_statistics": True, "bytes_per_pixel": 2_000_000}

_KNOWN = {f for f in ModelSpec.__dataclass_fields__} - {"extra"}


def _spec(entry: dict) -> ModelSpec:
    values = {k: v for k, v in entry.items() if k in _KNOWN}
    values["tasks"] = tuple(entry.get("tasks", ()))
    values["files"] = tuple(FileSpec(**f) for f in entry.get("files", ()))
    values["needs"] = tuple(entry.get("needs", ()))
    values["precisions"] = tuple(entry.get("precisions", ("fp32",)))
    for key in ("input_range", "output_range"):
        if key in entry:
            values[key] = tuple(float(v) for v in entry[key])
    values["extra"] = {k: v for k, v in entry.items() if k not in _KNOWN}
    return ModelSpec(**values)


class Catalog:
    def __init__(self, specs: list[ModelSpec]):
        self._specs = {s.id: s for s in specs}

    def __iter__(self):
        return iter(self._specs.values())

    def __len__(self):
        return len(self._specs)

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._specs

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            close = [i for i in self._specs if model_id.lower() in i]
            hint = f"; did you mean {', '.join(close[:5])}?" if close else "; see: restorer-cli models list"
            raise KeyError(f"unknown model {model_id!r}{hint}") from None

    def for_task(self, task: str) -> list[ModelSpec]:
        """Released models that do `task`, best first."""
        return sorted((s for s in self if task in s.tasks and s.released), key=lambda s: -s.rank)


DRIVE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")


def drive_file_id(url: str) -> str | None:
    """The file id of a Google Drive *file* link (/file/d/ID/..., ?id=ID); None for folders
    and other hosts."""
    parsed = urlparse(url)
    if parsed.hostname not in DRIVE_HOSTS or "/folders/" in parsed.path:
        return None
    m = re.match(r"^/file/(?:u/\d+/)?d/([-\w]+)", parsed.path)
    if m:
        return m.group(1)
    ids = parse_qs(parsed.query).get("id", [])
    return ids[0] if len(ids) == 1 and parsed.path.rstrip("/") in ("/uc", "/open", "/download") else None


def can_download(f: FileSpec) -> bool:
    """restorer can fetch this file itself: a direct URL, a Hugging Face file or a Google
    Drive file link (not a Drive folder, Baidu or a login page)."""
    if not f.url:
        return False
    return not f.browser or drive_file_id(f.url) is not None


def install_hint(spec: ModelSpec) -> str:
    """What to type to install a model (or where a browser must fetch it)."""
    if not spec.released:
        return f"model '{spec.id}' was announced by its authors but its weights were never released"
    browser = [f for f in spec.files if not can_download(f)]
    if browser:
        f = browser[0]
        return (f"model '{spec.id}' is not installed: download {f.name} in a browser from {f.url} "
                f"then run: restorer-cli models add {f.name} --id {spec.id}")
    return f"model '{spec.id}' is not installed: restorer-cli models download {spec.id}"


def human_size(n: int) -> str:
    """A file size for people ("-" when the catalog does not know it)."""
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def parse(text: str) -> Catalog:
    return Catalog([_spec(e) for e in tomllib.loads(text).get("model", [])])


_PINNED: Catalog | None = None  # a catalog that replaces all others (tests pin their own)


def load_catalog() -> Catalog:
    """The packaged catalog plus the user's own entries (<store home>/catalog.toml), which
    describe models restorer does not ship an entry for; a user entry replaces a packaged
    one with the same id."""
    if _PINNED is not None:
        return _PINNED
    return _load(str(home() / "catalog.toml"))


@lru_cache(maxsize=4)
def _load(user_catalog: str) -> Catalog:
    text = resources.files("restorer_models").joinpath("catalog.toml").read_text(encoding="utf-8")
    specs = {s.id: s for s in parse(text)}
    user = Path(user_catalog)
    if user.is_file():
        try:
            specs.update({s.id: s for s in parse(user.read_text(encoding="utf-8"))})
        except (tomllib.TOMLDecodeError, TypeError) as e:
            raise ValueError(f"cannot read '{user}': {e}") from None
    return Catalog(list(specs.values()))
