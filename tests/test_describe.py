"""Plan steps in plain words (restorer.plan.describe): what the app's plan list shows."""

from __future__ import annotations

import pytest

from restorer.plan import request
from restorer.plan.describe import describe_plan, describe_step, short_name
from restorer.tasks import TASK_WORDS, TASKS
from restorer.zoo.catalog import load_catalog, parse
from tests.store_helpers import tiny_hat_entry, use_catalog

BUILTINS = '''
[[model]]
id = "builtin:denoise"
title = "Non-local means denoiser (built-in)"
family = "builtin"
tasks = ["denoise"]
arch = "builtin"
rank = 1

[[model]]
id = "builtin:upscale"
title = "Lanczos upscaling (built-in, x2/x3/x4)"
family = "builtin"
tasks = ["superres"]
arch = "builtin"
scale = 2
rank = 1
'''
NINE_MB = 9_000_000


@pytest.fixture(autouse=True)
def store_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RESTORER_HOME", str(home))
    monkeypatch.delenv("RESTORER_MIRROR", raising=False)
    return home


@pytest.fixture
def catalog(monkeypatch):
    """Two built-ins and a downloadable HAT-S x4 of 9 MB (not installed)."""
    hat = tiny_hat_entry("hat-s-x4", title="HAT-S x4: small Hybrid Attention Transformer, classical super-resolution",
                         scale=4, files=[{"name": "HAT-S_SRx4.safetensors", "url": "https://example.invalid/h.safetensors",
                                          "size": NINE_MB}])
    return use_catalog(monkeypatch, BUILTINS + hat)


def test_every_task_has_words():
    assert set(TASK_WORDS) == set(TASKS)


def test_builtin_step(catalog):
    plan = request.plan_request(request.Options(), task="denoise", catalog=catalog)
    assert describe_plan(plan, catalog) == ["Reduce noise — built-in filter (no model needed)"]


def test_strength_and_scale_are_in_the_words(catalog):
    plan = request.plan_request(request.Options(strength=0.6), task="denoise", catalog=catalog)
    assert describe_step(plan.steps[0], catalog) == "Reduce noise, strength 60 % — built-in filter (no model needed)"
    plan = request.plan_request(request.Options(scale=3), task="superres", catalog=catalog)
    assert describe_step(plan.steps[0], catalog) == "Upscale 3× — built-in filter (no model needed)"


def test_a_network_says_whether_it_needs_a_download(catalog, store_home):
    plan = request.plan_request(request.Options(), model="hat-s-x4", catalog=catalog, keep_missing=True)
    assert plan.steps[0].backend == request.Backend.MISSING
    assert describe_plan(plan, catalog) == ["Upscale 4× — HAT-S (needs download, 9.0 MB)"]

    # installed: the planner picks it for 4x, and the line says so
    folder = store_home / "models" / "hat-s-x4"
    folder.mkdir(parents=True)
    (folder / "HAT-S_SRx4.safetensors").write_bytes(b"0")
    plan = request.plan_request(request.Options(scale=4), task="superres", catalog=catalog)
    assert plan.steps[0].model == "hat-s-x4"
    assert describe_plan(plan, catalog) == ["Upscale 4× — HAT-S (installed)"]


def test_multi_step_instruction_in_order(catalog):
    plan = request.plan_request(request.Options(), instruction="reduce the noise, then upscale 8x", catalog=catalog)
    assert describe_plan(plan, catalog) == [
        "Reduce noise — built-in filter (no model needed)",
        "Upscale 4× — built-in filter (no model needed)",
        "Upscale 2× — built-in filter (no model needed)",
    ]
    plan = request.plan_request(request.Options(), instruction="upscale to 4K", catalog=catalog)
    assert describe_plan(plan, catalog) == ["Upscale to 3840 px on the long side — built-in filter (no model needed)"]


def test_a_target_already_reached_is_a_resize():
    step = request.Step("superres", "resize", request.Backend.RESIZE, {"target_long_side": 100})
    assert describe_step(step, parse(BUILTINS)) == "Resize to the size asked for — no model needed"


def test_real_catalog_names_are_short():
    catalog = load_catalog()
    names = {spec.id: short_name(spec) for spec in catalog if spec.tasks}
    assert names["hat-s-x4"] == "HAT-S" and names["hat-l-x2-imagenet"] == "HAT-L"
    assert names["cgnet-sidd"] == "CGNet" and names["instructir-7d"] == "InstructIR"
    assert names["mirnetv2-sr-x2"] == "MIRNet-v2" and names["mambairv2-sr-small-x4"] == "MambaIRv2-S"
    long = {k: v for k, v in names.items() if len(v) > 24 or ":" in v or "(" in v}
    assert not long


def test_real_catalog_instructir_step():
    catalog = load_catalog()
    plan = request.plan_request(request.Options(), task="derain", catalog=catalog, keep_missing=True)
    (line,) = describe_plan(plan, catalog)
    assert line.startswith("Remove rain — InstructIR (needs download"), line
    assert "builtin" not in line and "->" not in line
