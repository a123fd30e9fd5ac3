"""Choosing a backend: --task picks the best installed network (by rank, and by scale for
superres), else the built-in operator, and says why; --model on a missing model gives the
install hint."""

import pytest

from restorer import engine
from restorer.catalog import parse

CATALOG = parse("""
[[model]]
id = "builtin:upscale"
title = "b"
family = "builtin"
tasks = ["superres"]
arch = "builtin"
scale = 2
rank = 1

[[model]]
id = "good-x4"
title = "good"
family = "t"
tasks = ["superres"]
arch = "HAT"
scale = 4
rank = 80
[[model.files]]
name = "good.pth"
url = "https://example.org/good.pth"

[[model]]
id = "better-x4"
title = "better"
family = "t"
tasks = ["superres"]
arch = "HAT"
scale = 4
rank = 90
[[model.files]]
name = "better.pth"
url = "https://example.org/a-page-for-browsers"
browser = true

[[model]]
id = "other-x2"
title = "x2"
family = "t"
tasks = ["superres"]
arch = "HAT"
scale = 2
rank = 95
[[model.files]]
name = "x2.pth"
url = "https://example.org/x2.pth"
""")


@pytest.fixture
def installed_ids(monkeypatch):
    ids = set()
    monkeypatch.setattr(engine, "installed", lambda spec: spec.builtin or spec.id in ids)
    return ids


def test_best_installed_model_for_the_scale(installed_ids):
    installed_ids.update({"good-x4", "better-x4", "other-x2"})
    step = engine.resolve_task("superres", engine.Options(scale=4), CATALOG)
    assert (step.model, step.backend, step.options["scale"]) == ("better-x4", "network", 4)
    installed_ids.discard("better-x4")
    assert engine.resolve_task("superres", engine.Options(scale=4), CATALOG).model == "good-x4"
    assert engine.resolve_task("superres", engine.Options(scale=2), CATALOG).model == "other-x2"


def test_falls_back_to_the_builtin_and_says_so(installed_ids):
    step = engine.resolve_task("superres", engine.Options(scale=4), CATALOG)
    assert step.model == "builtin:upscale" and step.backend == "builtin" and step.options["scale"] == 4
    assert "built-in" in step.why


def test_missing_model_hint_names_the_command_or_the_browser_page(installed_ids):
    with pytest.raises(engine.RequestError, match="restorer-cli models download good-x4"):
        engine.resolve_model("good-x4", engine.Options(), CATALOG)
    with pytest.raises(engine.RequestError, match=r"browser .*example.org.*models add better.pth --id better-x4"):
        engine.resolve_model("better-x4", engine.Options(), CATALOG)
    with pytest.raises(engine.RequestError, match="unknown model"):
        engine.resolve_model("nope", engine.Options(), CATALOG)
