"""Plans that tell the truth: a dry run shows the whole plan, what is not installed too (and
how to get it); scales are composed or refused when planning, not per file; text that is not
an instruction is refused, not guessed at; the default step order is the measured one."""

import json
import random
import re
import string
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from restorer.cli import main
from restorer.plan.instructions import CANONICAL_ORDER, MEASURED_ORDER, InstructionError, plan
from restorer.plan.request import Backend, Options, Plan, RequestError, plan_request, superres_steps
from restorer.zoo.catalog import load_catalog

REPO = Path(__file__).resolve().parents[1]
LOW, HIGH = REPO / "samples" / "lol_low_778.png", REPO / "samples" / "lol_high_778.png"
README_FIRST = "reduce the noise and make it brighter"  # the README's first example, on LOW


@pytest.fixture(autouse=True)
def empty_store(tmp_path, monkeypatch):
    """Nothing installed: only the built-in operators can run."""
    monkeypatch.setenv("RESTORER_HOME", str(tmp_path / "home"))


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ dry run: the whole plan
def test_dry_run_json_of_a_runnable_plan(capsys):
    code, out, err = cli(capsys, "--instruction", README_FIRST, LOW, "--dry-run", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["runnable"] is True
    assert [(s["task"], s["backend"]) for s in report["plan"]] == [("lowlight", "builtin"), ("denoise", "builtin")]
    assert report["files"][0]["status"] == "would-restore"


def test_dry_run_json_shows_a_step_that_is_not_installed(capsys, tmp_path):
    code, out, err = cli(capsys, "--instruction", "remove the rain and the noise", LOW, "--dry-run", "--json",
                         "-o", tmp_path / "out")
    assert code == 2
    report = json.loads(out)  # JSON on stdout although the plan cannot run
    assert report["runnable"] is False
    derain, denoise = report["plan"]
    assert (denoise["task"], denoise["backend"], denoise["model"]) == ("denoise", "builtin", "builtin:denoise")
    assert (derain["task"], derain["backend"], derain["installed"]) == ("derain", "missing", False)
    spec = load_catalog().get(derain["model"])
    assert spec.family == "instructir"
    text = derain["not_installed"]
    assert text.startswith("not installed: ") and spec.id in text
    assert f"licence {spec.licence}" in text and re.search(r"\d+(\.\d+)? (KB|MB|GB)", text)
    assert f"restorer-cli models download {spec.id}" in derain["get"]
    # one line on stderr says why it cannot run; nothing was written
    assert "cannot run" in one_line(err) and spec.id in err
    assert not (tmp_path / "out").exists()


def test_dry_run_text_shows_the_whole_plan(capsys):
    code, out, err = cli(capsys, "--instruction", "remove the rain and the noise", LOW, "--dry-run")
    assert code == 2
    lines = [line for line in out.splitlines() if line.startswith("plan: ")]
    assert lines[0].startswith("plan: derain -> not installed: derain needs instructir-7d")
    assert "get it: restorer-cli models download instructir-7d" in lines[0]
    assert lines[1].startswith("plan: denoise -> builtin:denoise [builtin]")
    one_line(err)


def test_dry_run_of_a_model_that_is_not_installed(capsys):
    code, out, err = cli(capsys, "--model", "hat-s-x4", LOW, "--dry-run", "--json")
    assert code == 2
    step = json.loads(out)["plan"][0]
    assert (step["task"], step["model"], step["backend"]) == ("superres", "hat-s-x4", "missing")
    assert "hat-s-x4" in step["not_installed"] and step["get"]


def test_a_real_run_still_refuses_in_one_line_before_any_file(capsys, tmp_path):
    code, out, err = cli(capsys, "--instruction", "remove the rain", LOW, "-o", tmp_path / "out")
    assert code == 2 and out == ""
    assert "instructir-7d" in one_line(err)
    assert not (tmp_path / "out").exists()


def test_planner_raises_for_runs_and_keeps_missing_steps_for_dry_runs():
    with pytest.raises(RequestError):
        plan_request(Options(), instruction="remove the rain")
    kept = plan_request(Options(), instruction="remove the rain", keep_missing=True)
    assert isinstance(kept, Plan) and not kept.runnable and kept.steps[0].backend == Backend.MISSING
    assert "instructir-7d" in kept.missing_line()


# ------------------------------------------------------------------ scales
def test_8x_is_composed_and_runs_end_to_end(capsys, tmp_path):
    small = tmp_path / "small.png"
    pixels = np.asarray(PILImage.open(REPO / "samples" / "kodim05_crop256.png").convert("RGB"))[100:116, 100:124]
    PILImage.fromarray(pixels).save(small)
    code, out, err = cli(capsys, "--instruction", "make it 8x bigger", small, "--dry-run", "--json")
    assert code == 0, err
    steps = json.loads(out)["plan"]
    assert [(s["task"], s["options"]["scale"]) for s in steps] == [("superres", 4), ("superres", 2)]
    assert "8x (4x then 2x)" in steps[0]["why"]

    code, out, err = cli(capsys, "--instruction", "make it 8x bigger", small, "-o", tmp_path / "out", "--json")
    assert code == 0, err
    assert json.loads(out)["files"][0]["status"] == "done"
    assert PILImage.open(tmp_path / "out" / "small.png").size == (24 * 8, 16 * 8)


@pytest.mark.parametrize("scale, factors", [(2, [2]), (4, [4]), (6, [3, 2]), (8, [4, 2]), (9, [3, 3]),
                                            (12, [4, 3]), (16, [4, 4]), (8.0, [4, 2])])
def test_scales_are_split_into_steps(scale, factors):
    steps = superres_steps(scale, Options(), load_catalog())
    assert [s.options["scale"] for s in steps] == factors


@pytest.mark.parametrize("scale, says", [(100, "at most 16x"), (17, "at most 16x"), (5, "4x or 6x"),
                                         (7, "6x or 8x"), (2.5, "whole factors"), (1, "whole factors"),
                                         (0, "whole factors")])
def test_impossible_scales_are_refused_when_planning(scale, says):
    with pytest.raises(RequestError, match=says) as e:
        superres_steps(scale, Options(), load_catalog())
    assert "\n" not in str(e.value)


def test_upscale_100x_is_refused_at_planning(capsys, tmp_path):
    code, out, err = cli(capsys, "--instruction", "upscale 100x", LOW, "-o", tmp_path / "out")
    assert code == 2 and out == "" and "100x" in one_line(err) and "16x" in err
    assert not (tmp_path / "out").exists()
    code, out, err = cli(capsys, "--instruction", "upscale 100x", LOW, "--dry-run", "--json")
    assert code == 2 and json.loads(out) == {"plan": [], "runnable": False, "error": one_line(err).split(": ", 1)[1]}


@pytest.mark.parametrize("text", ["enlarge by 250%", "upscale 5x", "upscale it to 3p", "make it 65k"])
def test_other_impossible_sizes_are_refused_at_planning(text):
    with pytest.raises(RequestError):
        plan_request(Options(), instruction=text)


# ------------------------------------------------------------------ text that is not an instruction
def _random(alphabet: str, n: int, seed: int) -> str:
    return "".join(random.Random(seed).choices(alphabet, k=n))


@pytest.mark.parametrize("text", [
    _random(string.printable, 10_000, 0),
    _random(string.ascii_letters + "   ", 10_000, 1),
    "qwzx",
    _random(string.ascii_lowercase + "     ", 600, 2),  # long garbage under the length limit
    _random(string.printable, 300, 3),
    "asdf qwerty zxcv " * 5,
])
def test_garbage_is_refused_in_one_line(capsys, tmp_path, text):
    code, out, err = cli(capsys, "--instruction", text, LOW, "-o", tmp_path / "out")
    assert code == 2 and out == ""
    line = one_line(err)
    assert len(line) < 400 and "remove the noise" in line
    assert not (tmp_path / "out").exists()


def test_random_text_never_becomes_a_plan():
    """Many random strings of 40+ characters: none is guessed into a plan."""
    alphabets = (string.ascii_lowercase, string.ascii_lowercase + "     ", string.ascii_letters + "  ",
                 string.printable)
    for seed in range(300):
        rng = random.Random(seed)
        text = "".join(rng.choices(alphabets[seed % 4], k=rng.randint(40, 900)))
        with pytest.raises(InstructionError):
            plan(text)


@pytest.mark.parametrize("text", [
    "denoise pls thx", "upsacle it", "ugh so hazey", "pic is blurry af", "remvoe the rian",
    "my grandma's photo from 1970 has scratches", "the sunset picture I took in Barcelona is blurry",
    "Eliminate the distortions caused by precipitation in this snapshot", "make it pop :)",
    "x2 please", "it's too dark!!! brighten it", "make it 1080p",
])
def test_real_instructions_still_plan(text):
    assert plan(text).steps


# ------------------------------------------------------------------ the measured step order
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_readme_example_plans_the_measured_order_and_it_scores_better():
    from restorer.batch.restore import restore
    from restorer.io.imaging import load
    from restorer.run.context import Context

    chosen = plan_request(Options(device="cpu"), instruction=README_FIRST)
    assert [s.task for s in chosen.steps] == ["lowlight", "denoise"]
    other = Plan(list(reversed(chosen.steps)), "cpu")
    low, high = load(LOW), load(HIGH).pixels
    ctx = Context("cpu")
    got = psnr(restore(low, chosen, ctx)[0].pixels, high)
    alternative = psnr(restore(low, other, ctx)[0].pixels, high)
    assert got >= alternative, (got, alternative)
    assert got > 20.0  # bench/step_order.md: 20.26 dB, against 19.20 the other way


def test_default_order_follows_every_measured_pair_and_the_bench_table():
    for first, then in MEASURED_ORDER:
        assert CANONICAL_ORDER.index(first) < CANONICAL_ORDER.index(then), (first, then)
    # every pair the bench decided is in MEASURED_ORDER, with its number
    table = (REPO / "bench" / "step_order.md").read_text(encoding="utf-8")
    # | better order | mean gain dB | on | upscales first | decides | planner's order |
    rows = re.findall(r"^\| (\S+) then (\S+) \| ([\d.]+) \| [^|]+ \| (?:yes|no) \| yes \|", table, re.M)
    decided = {(a, b): float(gain) for a, b, gain in rows}
    assert decided == MEASURED_ORDER
