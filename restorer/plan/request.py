"""From what the user asked for (a task, a model id or an instruction) to a Plan.

A Plan is resolved once per batch: each Step names the backend that will do it (a network,
a built-in operator, a pipeline, InstructIR), the model, its options and why it was chosen.
Running it over images is restorer.batch.restore's job; the CLI and the app both plan
through `plan_request`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from importlib.util import find_spec

from restorer.plan.instructions import InstructionError, resolve_scale
from restorer.plan.instructions import plan as parse_instruction
from restorer.tasks import MASK_LOCAL_TASKS, TASKS
from restorer.zoo.catalog import Catalog, ModelSpec, can_download, human_size, install_hint, load_catalog
from restorer.zoo.layout import is_ready

# Tasks run by a multi-stage pipeline, and the built-in operator each falls back to when
# its networks are not installed (classical detection + inpainting).
PIPELINE_FALLBACKS = {"old-photo": "builtin:inpaint", "remove-text": "builtin:inpaint"}
# Tasks whose networks run inside a pipeline rather than over tiles (faces: detect, align,
# restore each face, paste back; restorer.pipelines.face_restore). Faces have no fallback.
PIPELINE_TASKS = frozenset(PIPELINE_FALLBACKS) | {"faces"}
SUPERRES_SCALES = (2, 3, 4)  # what the built-in upscaler does in one step
# Larger factors are made of several steps (x8 = x4 then x2), up to this in total: beyond it
# a photo becomes hundreds of megapixels of invented detail.
MAX_TOTAL_SCALE = 16
# A target size ("to 4K", "1080p") must name a plausible resolution, in pixels of one side.
TARGET_SIDES = (64, 15360)  # 16K's long side


class Backend(StrEnum):
    NETWORK = "network"  # one catalog network over tiles
    BUILTIN = "builtin"  # a built-in operator over tiles
    PIPELINE = "pipeline"  # a multi-stage job (old photo, text removal)
    INSTRUCTIR = "instructir"  # InstructIR: a network with the user's words as second input
    GENERATIVE = "generative"  # a diffusion pipeline over tiles (invents detail; seed, steps, prompt)
    RESIZE = "resize"  # nothing to run: a target size already reached
    MISSING = "missing"  # not installed: shown by a dry run (what to get, how); never run


class RequestError(Exception):
    """The request cannot be served (unknown model, nothing installed for a task); exit 2."""


class NotInstalled(RequestError):
    """The request needs a model that is not installed and nothing installed can stand in:
    `specs` the catalog entries that would do it (empty when restorer knows none that was
    released), `wanted` what needed them (a task or a model id). The message is the install
    hint. A dry run shows such a step instead of raising (plan_request(keep_missing=True))."""

    def __init__(self, message: str, specs: list[ModelSpec], wanted: str):
        super().__init__(message)
        self.specs = list(specs)
        self.wanted = wanted

    @property
    def size(self) -> int:
        return sum(s.size for s in self.specs)

    def how_to_get(self) -> str:
        """The command(s) that install it, or where a browser must fetch it."""
        if not self.specs:
            return ""
        return install_hint(self.specs[0]).split(": ", 1)[-1]

    def offer(self) -> str:
        """What a download would fetch, for the consent question (CLI prompt, GUI button):
        "derain needs instructir-7d, bge-micro-v2, 65.0 MB, licence MIT"."""
        if not self.specs:
            return str(self)  # nothing released can do it: the message says so
        names = ", ".join(s.id for s in self.specs)
        known = all(f.size for s in self.specs for f in s.files)
        size = human_size(self.size) if known else (f"over {human_size(self.size)}" if self.size else "size unknown")
        licences = ", ".join(dict.fromkeys(s.licence for s in self.specs if s.licence)) or "unknown"
        nc = " (non-commercial)" if any(s.non_commercial for s in self.specs) else ""
        what = self.wanted if self.wanted != self.specs[0].id else f"model {self.wanted}"
        return f"{what} needs {names}, {size}, licence {licences}{nc}"


class ModelMissing(NotInstalled):
    """The request needs a model that is not installed but could be downloaded: `specs` are
    the catalog entries to fetch (the model, then what it needs that is missing), `wanted`
    says what needed them (a task or a model id). The message is the install hint."""

    def how_to_get(self) -> str:
        # `models download` fetches one entry: one command per entry (or --download on a run)
        return " && ".join(f"restorer-cli models download {s.id}" for s in self.specs)


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
    # Restore the faces after the other steps (restorer-cli --faces): one more step, "faces",
    # at the end of the plan, unless the plan already has one.
    faces: bool = False
    # Upscale with a generative (diffusion) model, which invents detail: only when asked for.
    generative: bool = False
    # The user's settings for generative steps: seed, steps, guidance, noise_level, prompt,
    # negative_prompt (the catalog entry's defaults fill in the rest).
    generation: dict = field(default_factory=dict)


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
    # A MISSING step: what is not installed ("derain needs instructir-7d, 65.0 MB, licence
    # MIT") and how to get it ("restorer-cli models download instructir-7d").
    missing: str = ""
    get: str = ""

    def plan_entry(self) -> dict:
        entry = {"task": self.task, "backend": str(self.backend), "model": self.model,
                 "options": self.options, **({"why": self.why} if self.why else {})}
        if self.backend == Backend.MISSING:
            entry.update(installed=False, not_installed=f"not installed: {self.missing}", get=self.get)
        return entry

    def plan_line(self) -> str:
        """The step for people, one line (restorer-cli --dry-run)."""
        if self.backend == Backend.MISSING:
            how = f"; get it: {self.get}" if self.get else ""
            return f"{self.task} -> not installed: {self.missing}{how}"
        return f"{self.task} -> {self.model} [{self.backend}] {self.options or ''}".rstrip()

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

    @property
    def mask_local(self) -> bool:
        """Every step changes only the pixels of a mask: the output must then not be
        re-encoded lossily, or pixels outside the mask change too (batch.files.output_path)."""
        return bool(self.steps) and all(step.task in MASK_LOCAL_TASKS for step in self.steps)

    @property
    def runnable(self) -> bool:
        return not any(s.backend == Backend.MISSING for s in self.steps)

    def missing_line(self) -> str:
        """Why the plan cannot run, one line ("" when it can)."""
        return "; ".join(f"{s.missing} ({s.get})" if s.get else s.missing
                         for s in self.steps if s.backend == Backend.MISSING)


def plan_request(options: Options, *, task: str | None = None, model: str | None = None,
                 instruction: str | None = None, catalog: Catalog | None = None,
                 keep_missing: bool = False) -> Plan:
    """The one dispatch from a request to a Plan: exactly one of task, model, instruction.

    A step whose model is not installed raises NotInstalled (ModelMissing when restorer can
    download it), so a run asks for it first; with `keep_missing` (a dry run) it becomes a
    MISSING step instead and the whole plan is returned (Plan.runnable says whether it can
    run). Requests that cannot be read, or that no model could serve, always raise."""
    if sum(x is not None for x in (task, model, instruction)) != 1:
        raise RequestError("say what to do: a task, a model or an instruction")
    catalog = catalog or load_catalog()
    if options.generative or (model is not None and model in catalog and catalog.get(model).generative):
        check_generative_packages(catalog.get(model).extra.get("pipeline") if model in catalog else None)

    def resolve(how) -> list[Step]:
        try:
            return how()
        except NotInstalled as e:
            if not keep_missing:
                raise
            return [missing_step(e, catalog)]

    if model is not None:
        steps = resolve(lambda: [resolve_model(model, options, catalog)])
    elif task == "superres" and options.scale is not None:
        steps = superres_steps(options.scale, options, catalog)
    elif task is not None:
        steps = resolve(lambda: [resolve_task(task, options, catalog)])
    else:
        steps = resolve_instruction(instruction, options, catalog, keep_missing=keep_missing)
    if options.faces and not any(s.task == "faces" for s in steps):
        steps += resolve(lambda: [faces_step(options, catalog)])
    if not keep_missing and any(s.task == "faces" and s.backend == Backend.PIPELINE for s in steps) \
            and find_spec("dlib") is None:
        # the face step would find no face and change nothing: say so before any file is read
        raise RequestError("restoring faces needs a face detector: pip install 'restorer[faces]' (dlib-bin)")
    return Plan([_with_scales(s, options, catalog) for s in steps], options.device, options.tile)


def check_generative_packages(pipeline: str | None = None) -> None:
    """A generative step needs torch and diffusers (restorer[generative]): said in one line
    before anything is downloaded or read."""
    from restorer.run.diffusion import install_line, missing_packages

    missing = missing_packages(pipeline)
    if missing:
        raise RequestError(install_line(missing))


def generative_ready(catalog: Catalog, scale: int = 4) -> ModelSpec | None:
    """The best installed generative model for `scale` whose packages are installed."""
    from restorer.run.diffusion import missing_packages

    for spec in catalog.for_task("superres"):
        if spec.generative and spec.output_scale == scale and installed(spec) \
                and not missing_packages(spec.extra.get("pipeline")):
            return spec
    return None


def faces_step(options: Options, catalog: Catalog | None = None) -> Step:
    """The face-restoration step --faces adds at the end of a plan: the best installed face
    network, at its own default strength (the other steps' --strength is theirs)."""
    step = resolve_task("faces", Options(options.device, options.tile), catalog)
    step.why = f"faces restored last (--faces); {step.why}"
    return step


def missing_step(error: NotInstalled, catalog: Catalog, prompt: str = "") -> Step:
    """The step a dry run shows for what is not installed: the model that would do it, its
    size and licence, and how to get it."""
    if error.wanted in TASKS:
        task, model = error.wanted, (error.specs[0].id if error.specs else "")
    else:  # a model asked for by id
        tasks = catalog.get(error.wanted).tasks
        task, model = (tasks[0] if tasks else "restore"), error.wanted
    return Step(task, model, Backend.MISSING, {}, prompt=prompt, why=str(error),
                missing=error.offer(), get=error.how_to_get())


def superres_steps(scale, options: Options, catalog: Catalog, prompt: str = "") -> list[Step]:
    """An upscaling factor as steps: one step when a network or the built-in upscaler does
    it, else the fewest steps whose factors multiply to it (x8 = x4 then x2); anything else
    is refused here, in one line, rather than failing on every file."""
    if isinstance(scale, float) and scale.is_integer():
        scale = int(scale)
    single = sorted({s.output_scale for s in catalog.for_task("superres") if not s.builtin and installed(s)}
                    | set(SUPERRES_SCALES))
    if not isinstance(scale, int) or scale < 2:
        raise RequestError(f"cannot upscale by {scale}x: restorer upscales by whole factors from 2x to "
                           f"{MAX_TOTAL_SCALE}x (2x, 3x, 4x and their products, e.g. 8x = 4x then 2x)")
    if scale > MAX_TOTAL_SCALE:
        raise RequestError(f"cannot upscale by {scale}x: at most {MAX_TOTAL_SCALE}x in total "
                           f"(beyond it the detail is invented, not restored); ask for {MAX_TOTAL_SCALE}x or less")
    factors = _factorise(scale, tuple(single))
    if factors is None:
        near = [n for n in range(2, MAX_TOTAL_SCALE + 1) if _factorise(n, tuple(single))]
        below = max(n for n in near if n < scale)
        above = min((n for n in near if n > scale), default=below)
        raise RequestError(f"cannot upscale by {scale}x: it is not a product of the factors restorer "
                           f"upscales by ({', '.join(f'{n}x' for n in single)}); ask for {below}x or {above}x")
    steps = []
    for n, factor in enumerate(factors, 1):
        opts = replace(options, scale=factor, extra=dict(options.extra))
        step = resolve_task("superres", opts, catalog, prompt=prompt)
        if len(factors) > 1:
            chain = " then ".join(f"{f}x" for f in factors)
            step.why = f"step {n} of {len(factors)} of {scale}x ({chain}); {step.why}"
        steps.append(step)
    return steps


def _factorise(scale: int, factors: tuple[int, ...]) -> list[int] | None:
    """The fewest factors (largest first) from `factors` whose product is `scale`, or None."""
    if scale in factors:
        return [scale]
    best = None
    for f in sorted(factors, reverse=True):
        if scale % f == 0 and scale // f > 1:
            rest = _factorise(scale // f, factors)
            if rest is not None and (best is None or len(rest) + 1 < len(best)):
                best = [f, *rest]
    return best


def check_target(options: dict) -> None:
    """A target size must be a plausible resolution ("3p" or "65K" are not)."""
    for key in ("target_long_side", "target_short_side"):
        if key in options and not TARGET_SIDES[0] <= options[key] <= TARGET_SIDES[1]:
            side = "long" if key == "target_long_side" else "short"
            raise RequestError(f"cannot upscale to {options[key]} px on the {side} side: a target size is "
                               f"from {TARGET_SIDES[0]} to {TARGET_SIDES[1]} px (16K)")


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
        raise NotInstalled(install_hint(spec), [spec] if spec.released else [], spec.id)
    task = spec.tasks[0] if spec.tasks else "restore"
    return Step(task, spec.id, _backend_of(spec), _step_options(spec, options), why="chosen with --model")


def resolve_task(task: str, options: Options, catalog: Catalog | None = None, prompt: str = "") -> Step:
    """The best installed backend for a task: a network, else the built-in operator."""
    if task not in TASKS:
        raise RequestError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    catalog = catalog or load_catalog()
    candidates = [s for s in catalog.for_task(task) if not s.builtin]
    if task == "superres":
        wanted = options.scale or (4 if options.generative else 2)
        # generative models invent detail: only when asked for, and then only they
        candidates = [s for s in candidates if s.output_scale == wanted and s.generative == options.generative]
        if options.generative and "prompt" in options.generation:  # words to follow: a text-guided model first
            candidates.sort(key=lambda s: s.extra.get("pipeline") != "StableDiffusionUpscalePipeline")
        if options.generative and not candidates:
            scales = sorted({s.output_scale for s in catalog.for_task(task) if s.generative})
            raise RequestError(f"generative upscaling is {' or '.join(f'{n}x' for n in scales)} only, not {wanted}x; "
                               f"ask for --scale {scales[-1]}, or leave out --generative")
    for spec in candidates:
        if installed(spec):
            kind = "generative model" if spec.generative else "model"
            return Step(task, spec.id, _backend_of(spec), _step_options(spec, options), prompt=prompt,
                        why=f"best installed {kind} for {task}")
    if task in PIPELINE_FALLBACKS and not options.generative:
        return Step(task, PIPELINE_FALLBACKS[task], Backend.PIPELINE, _step_options(catalog.get(PIPELINE_FALLBACKS[task]), options),
                    prompt=prompt, why=f"no network for {task} is installed; using classical fallbacks")
    builtins = [s for s in catalog.for_task(task) if s.builtin and not options.generative]
    if builtins:
        spec = builtins[0]
        return Step(task, spec.id, Backend.BUILTIN, _step_options(spec, options), prompt=prompt,
                    why=f"no network for {task} is installed; using the built-in operator")
    message = no_generative_message(catalog) if options.generative else no_backend_message(task, catalog)
    for spec in candidates:
        fetch = to_download(spec, catalog)
        if fetch:
            raise ModelMissing(message, fetch, task)
    released = [s for s in candidates if s.released]
    raise NotInstalled(message, released[:1], task)


def no_generative_message(catalog: Catalog) -> str:
    specs = [s for s in catalog.for_task("superres") if s.generative]
    return (f"no generative model is installed; models that can: {', '.join(s.id for s in specs)}. "
            f"Install one: {install_hint(specs[0]).split(': ', 1)[-1]}")


def _backend_of(spec: ModelSpec) -> str:
    if spec.generative:
        return Backend.GENERATIVE
    if any(t in PIPELINE_TASKS for t in spec.tasks):
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
    if spec.generative:
        defaults = {k: spec.extra[k] for k in ("steps", "guidance", "noise_level", "prompt", "negative_prompt")
                    if k in spec.extra}
        out.update({"seed": 0, **defaults, **options.generation})
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


def resolve_instruction(text: str, options: Options, catalog: Catalog | None = None,
                        keep_missing: bool = False) -> list[Step]:
    """An instruction in words -> Steps. InstructIR takes the user's own words for the tasks
    it was trained on when it is installed; else each task gets its best installed backend.
    A factor one step cannot do is split (x8 = x4 then x2) or refused; with `keep_missing` a
    step nothing installed can do becomes a MISSING step instead of raising NotInstalled."""
    catalog = catalog or load_catalog()
    try:
        parsed = parse_instruction(text or "")
    except InstructionError as e:
        raise RequestError(str(e)) from None
    instruct = next((s for s in catalog.for_task("derain") if s.family == INSTRUCT_MODEL_FAMILY and installed(s)), None)
    steps = []
    fallbacks = []  # (index of the first step, why) where a generative upscale was asked for but cannot run
    for p in parsed.steps:
        step_options = Options(options.device, options.tile, p.options.get("scale", options.scale),
                               p.options.get("strength", options.strength), dict(options.extra))
        if instruct is not None and p.task in instruct.tasks and p.task != "superres":
            steps.append(Step(p.task, instruct.id, Backend.INSTRUCTIR, dict(p.options), prompt=p.prompt or text,
                              why="InstructIR is installed and was trained for this; it gets your words"))
            continue
        if p.task == "superres" and p.options.pop("generative", False):
            step = generative_step(p, text, options, catalog)
            if step is not None:
                steps.append(step)
                continue
            fallbacks.append((len(steps), generative_unavailable(p, catalog)))
        if p.task == "superres":
            check_target(p.options)
            if "scale" in p.options:
                chain = superres_steps(p.options["scale"], step_options, catalog, prompt=p.prompt)
                for n, step in enumerate(chain, 1):
                    # a target size ("2x, to 4K") is reached once, after the last factor
                    step.options.update({k: v for k, v in p.options.items()
                                         if k != "scale" and (n == len(chain) or not k.startswith("target_"))})
                steps.extend(chain)
                continue
        try:
            step = resolve_task(p.task, step_options, catalog, prompt=p.prompt)
        except NotInstalled as e:
            if not keep_missing:
                raise
            steps.append(missing_step(e, catalog, prompt=p.prompt))
            steps[-1].options.update(p.options)
            continue
        for key, value in p.options.items():
            step.options.setdefault(key, value)
        if "scale" not in p.options and ("target_long_side" in p.options or "target_short_side" in p.options):
            step.options.pop("scale", None)  # chosen per image, from its size, when it runs
        steps.append(step)
    for first, why in fallbacks:
        for step in steps[first:]:
            if step.task == "superres":
                step.why = f"{why}; {step.why}"
    return steps


def generative_step(intent, text: str, options: Options, catalog: Catalog) -> Step | None:
    """The generative upscale an instruction asked for ("add detail"), when a generative model
    is installed for its factor and its packages are here; else None (a regression upscale
    does it, with a note). The SD upscaler's prompt is the instruction's own words."""
    if "target_long_side" in intent.options or "target_short_side" in intent.options:
        return None
    spec = generative_ready(catalog, intent.options.get("scale", 4))
    if spec is None:
        return None
    generation = {"prompt": text, **options.generation}
    step_options = Options(options.device, options.tile, spec.output_scale, None, dict(options.extra),
                           generative=True, generation=generation)
    return Step("superres", spec.id, Backend.GENERATIVE, _step_options(spec, step_options), prompt=intent.prompt,
                why="you asked for invented detail and a generative model is installed")


def generative_unavailable(intent, catalog: Catalog) -> str:
    """Why an instruction's generative upscale is done by a regression model instead."""
    from restorer.run.diffusion import EXTRA, missing_packages

    specs = [s for s in catalog.for_task("superres") if s.generative]
    scale = intent.options.get("scale", 4)
    if not any(s.output_scale == scale for s in specs):
        return f"generative upscaling is {specs[0].output_scale}x only, so a regression model upscales {scale}x"
    if missing_packages():
        return f"generative upscaling needs pip install '{EXTRA}'; a regression model upscales instead"
    return (f"no generative model is installed (restorer-cli models download {specs[0].id}); "
            "a regression model upscales instead, without inventing detail")
