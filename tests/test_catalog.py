"""models/catalog.toml: the schema holds, ids are unique, every arch is known, and every
checkpoint in the conformance MANIFESTS.json (released or only announced) has an entry."""

import json
import tomllib
from importlib import resources

import pytest

from restorer.archs import ARCHS
from restorer.tasks import TASKS
from restorer.zoo.catalog import load_catalog
from tests.manifests import FIXTURES

SPECIAL_ARCHS = {"builtin", "pipeline", "bundled", "diffusers"}
RAW = tomllib.loads(resources.files("restorer_models").joinpath("catalog.toml").read_text())["model"]


def test_ids_are_unique_and_well_formed():
    ids = [e["id"] for e in RAW]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    for i in ids:
        assert i == i.lower() and " " not in i, i


@pytest.mark.parametrize("entry", RAW, ids=[e["id"] for e in RAW])
def test_entry_schema(entry):
    for key in ("id", "title", "family", "tasks", "arch"):
        assert key in entry, f"{entry['id']}: missing {key}"
    assert set(entry["tasks"]) <= set(TASKS), entry["tasks"]
    assert entry["arch"] in ARCHS or entry["arch"] in SPECIAL_ARCHS, f"unknown arch {entry['arch']!r}"
    assert entry.get("licence"), f"{entry['id']}: no licence"
    spec = load_catalog().get(entry["id"])
    assert 1 <= spec.output_scale <= 4 and spec.pad_multiple >= 1 and spec.overlap >= 0
    if entry["arch"] in ARCHS and spec.released:
        assert spec.files, f"{entry['id']}: a released network lists no files"
        for f in spec.files:
            assert f.name and f.url.startswith("https://"), f
            assert not f.sha256 or len(f.sha256) == 64


def test_non_commercial_licences_are_flagged():
    catalog = load_catalog()
    for spec in catalog:
        if spec.family in ("mirnet", "mirnetv2") or spec.arch == "GaRNet" or spec.id == "face-landmarks-dlib68":
            assert spec.non_commercial, spec.id


def test_every_conformance_manifest_has_an_entry():
    rows = json.loads((FIXTURES / "MANIFESTS.json").read_text())
    by_manifest = {}
    for spec in load_catalog():
        if spec.manifest:
            by_manifest.setdefault(spec.manifest, []).append(spec)
    missing = [r["manifest"] for r in rows if r["manifest"] not in by_manifest]
    assert not missing, missing
    for row in rows:
        for spec in by_manifest[row["manifest"]]:
            assert spec.released == row["released"], (spec.id, row["manifest"])


def test_builtin_operators_are_listed_for_their_tasks():
    catalog = load_catalog()
    for task in ("denoise", "dehaze", "lowlight", "superres"):
        assert any(s.builtin for s in catalog.for_task(task)), task
