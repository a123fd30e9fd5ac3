"""A plan's steps in plain words, for the app's plan list: what each step does to the photo
and what does it, in the words a photographer uses ("Reduce noise — built-in filter (no
model needed)", "Upscale 4× — HAT-S (needs download, 9.0 MB)"), not the engine's
("denoise -> builtin:denoise [builtin]"). No Qt: the CLI may use it too."""

from __future__ import annotations

import re

from restorer.plan.request import Backend, Plan, Step, installed, to_download
from restorer.tasks import TASK_WORDS
from restorer.zoo.catalog import Catalog, ModelSpec, human_size, load_catalog

# What each task does to the photo, as a verb phrase (one per name in restorer.tasks.TASKS).
DASH = " — "
BUILTIN = "built-in filter (no model needed)"


def task_words(task: str) -> str:
    return TASK_WORDS.get(task, task.replace("-", " ").capitalize())


def short_name(spec: ModelSpec) -> str:
    """A model's name without its description: the catalog title, less what is in brackets,
    up to its colon or comma ("HAT-S x4: small Hybrid ..." -> "HAT-S x4"), else its first
    word ("CGNet (CascadedGaze) real-noise denoiser" -> "CGNet"). The scale is dropped: the
    step's words say it ("Upscale 4× — HAT-S")."""
    title = re.sub(r"\s*\([^)]*\)", "", spec.title or spec.id)  # "(CascadedGaze)", "(DF2K)"
    if ":" in title:
        name = title.split(":", 1)[0].split(",", 1)[0].strip()
    else:
        words = title.split()
        name = words[0].rstrip(",") if words else ""
    name = re.sub(r"\s+x\d+\b", "", name).strip()
    return name or spec.id


def _what(step: Step, spec: ModelSpec | None) -> str:
    """The task with the options that change what it does: the factor (the model's own when
    the step has none, as a step not installed yet has) or target size, the strength."""
    o = dict(step.options)
    if step.task == "superres" and spec is not None and spec.output_scale > 1:
        o.setdefault("scale", spec.output_scale)
    if step.backend == Backend.RESIZE:
        return "Resize to the size asked for"
    words = task_words(step.task)
    if step.task == "superres":
        if "target_long_side" in o:
            words += f" to {o['target_long_side']} px on the long side"
        elif "target_short_side" in o:
            words += f" to {o['target_short_side']} px on the short side"
        elif "scale" in o:
            words += f" {o['scale']}×"
    if o.get("strength") is not None:
        words += f", strength {round(float(o['strength']) * 100)} %"
    return words


def _availability(spec: ModelSpec, catalog: Catalog) -> str:
    """(installed), (needs download, SIZE) counting what it needs, or (not installed)."""
    if installed(spec):
        return "(installed)"
    fetch = to_download(spec, catalog)
    if fetch:
        size = sum(s.size for s in fetch)
        known = all(f.size for s in fetch for f in s.files)
        if not size:
            return "(needs download)"
        return f"(needs download, {'' if known else 'over '}{human_size(size)})"
    return "(not installed)"


def _how(step: Step, spec: ModelSpec | None, catalog: Catalog) -> str:
    if step.backend == Backend.RESIZE:
        return "no model needed"
    if spec is None:  # a MISSING step nothing released can do, or a model the catalog lost
        return step.model or (f"not available: {step.missing}" if step.missing else "not available")
    if spec.builtin:
        return BUILTIN
    how = f"{short_name(spec)} {_availability(spec, catalog)}"
    if step.backend == Backend.INSTRUCTIR:
        how += ", following your words"
    if spec.generative:
        how += f", invents detail (seed {step.options.get('seed', 0)})"
    return how


def describe_step(step: Step, catalog: Catalog | None = None) -> str:
    """One step for people: "Reduce noise — built-in filter (no model needed)"."""
    catalog = catalog if catalog is not None else load_catalog()
    spec = catalog.get(step.model) if step.model in catalog else None
    return _what(step, spec) + DASH + _how(step, spec, catalog)


def describe_plan(plan: Plan, catalog: Catalog | None = None) -> list[str]:
    """One line per step, in the order they run."""
    catalog = catalog if catalog is not None else load_catalog()
    return [describe_step(step, catalog) for step in plan.steps]

