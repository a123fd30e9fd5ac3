"""Choosing a backend: --task picks the best installed network (by rank, and by scale for
superres), else the built-in operator, and says why; --model on a missing model gives the
install hint."""

import pytest

from restorer.plan import request
from restorer.zoo.catalog import parse

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
    monkeypatch.setattr(request, "installed", lambda spec: spec.builtin or spec.id in ids)
    return ids


def test_best_installed_model_for_the_scale(installed_ids):
    installed_ids.update({"good-x4", "better-x4", "other-x2"})
    step = request.resolve_task("superres", request.Options(scale=4), CATALOG)
    assert (step.model, step.backend, step.options["scale"]) == ("better-x4", "network", 4)
    installed_ids.discard("better-x4")
    assert request.resolve_task("superres", request.Options(scale=4), CATALOG).model == "good-x4"
    assert request.resolve_task("superres", request.Options(scale=2), CATALOG).model == "other-x2"


def test_falls_back_to_the_builtin_and_says_so(installed_ids):
    step = request.resolve_task("superres", request.Options(scale=4), CATALOG)
    assert step.model == "builtin:upscale" and step.backend == "builtin" and step.options["scale"] == 4
    assert "built-in" in step.why


def test_missing_model_hint_names_the_command_or_the_browser_page(installed_ids):
    with pytest.raises(request.RequestError, match="restorer-cli models download good-x4"):
        request.resolve_model("good-x4", request.Options(), CATALOG)
    with pytest.raises(request.RequestError, match=r"browser .*example.org.*models add better.pth --id better-x4"):
        request.resolve_model("better-x4", request.Options(), CATALOG)
    with pytest.raises(request.RequestError, match="unknown model"):
        request.resolve_model("nope", request.Options(), CATALOG)
