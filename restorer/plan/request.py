"""From what the user asked for (a task, a model id or an instruction) to a Plan.

A Plan is resolved once per batch: each Step names the backend that will do it (a network,
a built-in operator, a pipeline, InstructIR), the model, its options and why it was chosen.
Running it over images is restorer.batch.restore's job; the CLI and the app both plan
through `plan_request`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from restorer.plan.instructions import InstructionError, resolve_scale
from restorer.plan.instructions import plan as parse_instruction
from restorer.tasks import TASKS
from restorer.zoo.catalog import Catalog, ModelSpec, can_download, human_size, install_hint, load_catalog
from restorer.zoo.layout import is_ready

# Tasks run by a multi-stage pipeline, and the built-in operator each falls back to when
# its networks are not installed (classical detection + inpainting).
PIPELINE_FALLBACKS = {"old-photo": "builtin:inpaint", "remove-text": "builtin:inpaint"}
SUPERRES_SCALES = (2, 3, 4)


class Backend(StrEnum):
    NETWORK = "network"  # one catalog network over tiles
    BUILTIN = "builtin"  # a built-in operator over tiles
    PIPELINE = "pipeline"  # a multi-stage job (old photo, text removal)
    INSTRUCTIR = "instructir"  # InstructIR: a network with the user's words as second input
    RESIZE = "resize"  # nothing to run: a target size already reached


class RequestError(Exception):
    """The request cannot be served (unknown model, nothing installed for a task); exit 2."""


class ModelMissing(RequestError):
    """The request needs a model that is not installed but could be downloaded: `specs` are
    the catalog entries to fetch (the model, then what it needs that is missing), `wanted`
    says what needed them (a task or a model id). The message is the install hint."""

    def __init__(self, message: str, specs: list[ModelSpec], wanted: str):
        super().__init__(message)
        self.specs = list(specs)
        self.wanted = wanted

    @property
    def size(self) -> int:
        return sum(s.size for s in self.specs)

    def offer(self) -> str:
        """What a download would fetch, for the consent question (CLI prompt, GUI button):
        "derain needs instructir-7d, bge-micro-v2, 65.0 MB, licence MIT"."""
        names = ", ".join(s.id for s in self.specs)
        known = all(f.size for s in self.specs for f in s.files)
        size = human_size(self.size) if known else (f"over {human_size(self.size)}" if self.size else "size unknown")
        licences = ", ".join(dict.fromkeys(s.licence for s in self.specs if s.licence)) or "unknown"
        nc = " (non-commercial)" if any(s.non_commercial for s in self.specs) else ""
        what = self.wanted if self.wanted != self.specs[0].id else f"model {self.wanted}"
        return f"{what} needs {names}, {size}, licence {licences}{nc}"


def downloadable(spec: ModelSpec) -> bool:
    """restorer can fetch this entry's files itself (no browser page, no login)."""
    if not spec.released or spec.builtin:
        return False
    if spec.is_pipeline:
        return True
    return bool(spec.files) and all(can_download(f) for f in spec.files)


def to_download(spec: ModelSpec, catalog: Catalog) -> list[ModelSpec] | None:
    """What must be downloaded for `spec` to run (itself and its missing needs), or None when
    some of it cannot be downloaded automatically."""
    from restorer.zoo.layout import is_installed

    out: list[ModelSpec] = []

    def visit(s: ModelSpec) -> bool:
        if s.id in {o.id for o in out} or is_ready(s):
            return True
        if not downloadable(s):
            return False
        if not s.is_pipeline and not is_installed(s):
            out.append(s)
        for need in s.needs:
            if need not in catalog or not visit(catalog.get(need)):
                return False
        return True

    return out if visit(spec) and out else None


@dataclass
class Options:
    device: str = "auto"
    tile: int | None = None
    scale: int | None = None
    strength: float | None = None
    extra: dict = field(default_factory=dict)  # pipeline options: mask, dilate, scratches, faces, hr


@dataclass
class Step:
    task: str
    model: str  # catalog id
    backend: Backend
    options: dict = field(default_factory=dict)
    prompt: str = ""  # the user's own words, for text-prompted networks
    why: str = ""  # how this backend was chosen, for the user
    # A superres step with a target size ("to 4K"): the step for each model scale, resolved
    # with the plan; the image's size picks one when it runs.
    by_scale: dict[int, "Step"] = field(default_factory=dict)

    def plan_entry(self) -> dict:
        return {"task": self.task, "backend": str(self.backend), "model": self.model,
                "options": self.options, **({"why": self.why} if self.why else {})}

    @property
    def target_size(self) -> bool:
        return self.task == "superres" and ("target_long_side" in self.options or "target_short_side" in self.options)


@dataclass
class Plan:
    steps: list[Step]
    device: str = "auto"
    tile: int | None = None

    def entries(self) -> list[dict]:
        return [s.plan_entry() for s in self.steps]


def plan_request(options: Options, *, task: str | None = None, model: str | None = None,
                 instruction: str | None = None, catalog: Catalog | None = None) -> Plan:
    """The one dispatch from a request to a Plan: exactly one of task, model, instruction."""
    if sum(x is not None for x in (task, model, instruction)) != 1:
        raise RequestError("say what to do: a task, a model or an instruction")
    if model is not None:
        steps = [resolve_model(model, options, catalog)]
    elif task is not None:
        steps = [resolve_task(task, options, catalog)]
    else:
        steps = resolve_instruction(instruction, options, catalog)
    return Plan([_with_scales(s, options, catalog) for s in steps], options.device, options.tile)


def _with_scales(step: Step, options: Options, catalog: Catalog | None) -> Step:
    """Resolve, once, the step each model scale would use for a target-size superres step."""
    if not step.target_size or "scale" in step.options:
        return step
    catalog = catalog or load_catalog()
    scales = sorted({s.output_scale for s in catalog.for_task("superres") if not s.builtin and installed(s)}
                    | set(SUPERRES_SCALES))
    for scale in scales:
        opts = replace(options, scale=scale, extra=dict(options.extra))
        chosen = resolve_task("superres", opts, catalog, prompt=step.prompt)
        chosen.options.update({k: v for k, v in step.options.items() if k != "scale"})
        step.by_scale[scale] = chosen
    return step


def step_for_size(step: Step, width: int, height: int) -> Step:
    """The step that reaches a target size for an image of this size (then resized to it)."""
    scale = resolve_scale(step.options, width, height, available=tuple(sorted(step.by_scale)))
    if scale <= 1:
        return Step("superres", "resize", Backend.RESIZE, dict(step.options), why="already at the size asked for")
    return step.by_scale[scale]


# ---------------------------------------------------------------- choosing backends


def installed(spec: ModelSpec) -> bool:
    if spec.builtin:
        return True
    return is_ready(spec)


def resolve_model(model_id: str, options: Options, catalog: Catalog | None = None) -> Step:
    catalog = catalog or load_catalog()
    try:
        spec = catalog.get(model_id)
    except KeyError as e:
        raise RequestError(e.args[0]) from None
    if not spec.tasks and not spec.is_pipeline:
        raise RequestError(f"model '{spec.id}' is a part of a pipeline, not something to run on its own")
    if not installed(spec):
        fetch = to_download(spec, catalog)
        if fetch:
            raise ModelMissing(install_hint(spec), fetch, spec.id)
        raise RequestError(install_hint(spec))
    task = spec.tasks[0] if spec.tasks else "restore"
    return Step(task, spec.id, _backend_of(spec), _step_options(spec, options), why="chosen with --model")


def resolve_task(task: str, options: Options, catalog: Catalog | None = None, prompt: str = "") -> Step:
    """The best installed backend for a task: a network, else the built-in operator."""
    if task not in TASKS:
        raise RequestError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    catalog = catalog or load_catalog()
    candidates = [s for s in catalog.for_task(task) if not s.builtin]
    if task == "superres":
        wanted = options.scale or 2
        candidates = [s for s in candidates if s.output_scale == wanted]
    for spec in candidates:
        if installed(spec):
            return Step(task, spec.id, _backend_of(spec), _step_options(spec, options), prompt=prompt,
                        why=f"best installed model for {task}")
    if task in PIPELINE_FALLBACKS:
        return Step(task, PIPELINE_FALLBACKS[task], Backend.PIPELINE, _step_options(catalog.get(PIPELINE_FALLBACKS[task]), options),
                    prompt=prompt, why=f"no network for {task} is installed; using classical fallbacks")
    builtins = [s for s in catalog.for_task(task) if s.builtin]
    if builtins:
        spec = builtins[0]
        return Step(task, spec.id, Backend.BUILTIN, _step_options(spec, options), prompt=prompt,
                    why=f"no network for {task} is installed; using the built-in operator")
    for spec in candidates:
        fetch = to_download(spec, catalog)
        if fetch:
            raise ModelMissing(no_backend_message(task, catalog), fetch, task)
    raise RequestError(no_backend_message(task, catalog))


def _backend_of(spec: ModelSpec) -> str:
    if any(t in PIPELINE_FALLBACKS for t in spec.tasks):
        return Backend.PIPELINE
    if spec.builtin:
        return Backend.BUILTIN
    if spec.is_pipeline:
        return Backend.PIPELINE
    return Backend.NETWORK


def _step_options(spec: ModelSpec, options: Options) -> dict:
    out = {}
    if "superres" in spec.tasks:
        out["scale"] = (options.scale or spec.scale) if spec.builtin else spec.output_scale
    if options.strength is not None:
        out["strength"] = options.strength
    out.update(options.extra)
    return out




def no_backend_message(task: str, catalog: Catalog) -> str:
    specs = [s for s in catalog.for_task(task) if not s.builtin]
    if not specs:
        return f"nothing in restorer can do {task!r} yet"
    names = ", ".join(s.id for s in specs[:6])
    return (f"no installed model can do {task!r} and there is no built-in operator for it; "
            f"models that can: {names}. Install one: {install_hint(specs[0]).split(': ', 1)[-1]}")


# ---------------------------------------------------------------- instructions

INSTRUCT_MODEL_FAMILY = "instructir"


def resolve_instruction(text: str, options: Options, catalog: Catalog | None = None) -> list[Step]:
    """An instruction in words -> Steps. InstructIR takes the user's own words for the tasks
    it was trained on when it is installed; else each task gets its best installed backend."""
    catalog = catalog or load_catalog()
    try:
        parsed = parse_instruction(text or "")
    except InstructionError as e:
        raise RequestError(str(e)) from None
    instruct = next((s for s in catalog.for_task("derain") if s.family == INSTRUCT_MODEL_FAMILY and installed(s)), None)
    steps = []
    for p in parsed.steps:
        step_options = Options(options.device, options.tile, p.options.get("scale", options.scale),
                               p.options.get("strength", options.strength), dict(options.extra))
        if instruct is not None and p.task in instruct.tasks and p.task != "superres":
            steps.append(Step(p.task, instruct.id, Backend.INSTRUCTIR, dict(p.options), prompt=p.prompt or text,
                              why="InstructIR is installed and was trained for this; it gets your words"))
            continue
        step = resolve_task(p.task, step_options, catalog, prompt=p.prompt)
        for key, value in p.options.items():
            step.options.setdefault(key, value)
        if "scale" not in p.options and ("target_long_side" in p.options or "target_short_side" in p.options):
            step.options.pop("scale", None)  # chosen per image, from its size, when it runs
        steps.append(step)
    return steps
