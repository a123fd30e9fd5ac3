"""restorer-cli --instruction end to end: the built-in operator when nothing is installed,
a clear refusal naming the models for a task with no built-in, and InstructIR (the tiny
fixture registered as a model, with a tiny sentence encoder) given the user's words."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.manifests import FIXTURES

REPO = Path(__file__).resolve().parents[1]
RAINY = REPO / "samples" / "rain100l_rainy_1.png"
NOISY = REPO / "samples" / "sidd_noisy_06.png"


def cli(*args, home: Path):
    env = {**os.environ, "RESTORER_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "restorer.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_noise_instruction_runs_the_builtin_and_says_so(tmp_path):
    r = cli("--instruction", "reduce the noise", NOISY, "-o", tmp_path / "out", "--json", home=tmp_path / "h")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["plan"] == [{"task": "denoise", "backend": "builtin", "model": "builtin:denoise", "options": {},
                               "why": report["plan"][0]["why"]}]
    assert "built-in" in report["plan"][0]["why"]
    assert report["files"][0]["status"] == "done" and (tmp_path / "out" / NOISY.name).exists()


def test_rain_instruction_without_a_model_names_the_models_and_exits_2(tmp_path):
    r = cli("--instruction", "remove the rain", RAINY, "-o", tmp_path / "out", home=tmp_path / "h")
    assert r.returncode == 2
    assert "derain" in r.stderr and "instructir-7d" in r.stderr and "restorer-cli models" in r.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_json_plan_shape(tmp_path):
    r = cli("--instruction", "remove the noise then upscale 2x", NOISY, "--dry-run", "--json", home=tmp_path / "h")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    assert [(p["task"], p["model"]) for p in plan] == [("denoise", "builtin:denoise"), ("superres", "builtin:upscale")]
    assert plan[1]["options"]["scale"] == 2 and all({"task", "backend", "model", "options"} <= set(p) for p in plan)


def test_nonsense_instruction_lists_what_is_understood(tmp_path):
    r = cli("--instruction", "the cat sat on the mat", NOISY, "-o", tmp_path / "o", home=tmp_path / "h")
    assert r.returncode == 2 and "remove the noise" in r.stderr.lower() and "Traceback" not in r.stderr


def _register_tiny_instructir(home: Path) -> None:
    import torch

    from tests.test_arch_instructir import TINY_HEAD, TINY_IMAGE
    from tests.test_text_encoder import TINY_BERT, build_tokenizer_json, random_hf_state_dict

    models = home / "models"
    for part in ("instructir-7d", "instructir-7d-lm", "bge-micro-v2"):
        (models / part).mkdir(parents=True)
    (models / "instructir-7d" / "im.safetensors").write_bytes((FIXTURES / "instructir" / "instructir_tiny.safetensors").read_bytes())
    (models / "instructir-7d-lm" / "lm.safetensors").write_bytes((FIXTURES / "instructir" / "instructir_tiny.lmhead.safetensors").read_bytes())
    torch.save({k: v.half() for k, v in random_hf_state_dict(TINY_BERT).items()}, models / "bge-micro-v2" / "pytorch_model.bin")
    build_tokenizer_json(models / "bge-micro-v2" / "tokenizer.json")

    def table(d):
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"

    (home / "catalog.toml").write_text(f"""
[[model]]
id = "instructir-7d"
title = "InstructIR (tiny test fixture)"
family = "instructir"
tasks = ["denoise", "deblur", "derain", "dehaze", "lowlight", "enhance"]
arch = "InstructIR"
hparams = {table(TINY_IMAGE)}
rank = 90
needs = ["instructir-7d-lm", "bge-micro-v2"]
[[model.files]]
name = "im.safetensors"

[[model]]
id = "instructir-7d-lm"
title = "tiny head"
family = "instructir"
tasks = []
arch = "InstructIRLMHead"
hparams = {table(TINY_HEAD)}
[[model.files]]
name = "lm.safetensors"

[[model]]
id = "bge-micro-v2"
title = "tiny BERT"
family = "instructir"
tasks = []
arch = "BertModel"
hparams = {table(TINY_BERT)}
[[model.files]]
name = "pytorch_model.bin"
[[model.files]]
name = "tokenizer.json"
""")


def test_rain_instruction_runs_instructir_with_the_users_words(tmp_path):
    pytest.importorskip("torch")
    home = tmp_path / "h"
    _register_tiny_instructir(home)
    r = cli("--instruction", "please remove the rain", RAINY, "-o", tmp_path / "out", "--json", home=home)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [(p["task"], p["backend"], p["model"]) for p in report["plan"]] == [("derain", "instructir", "instructir-7d")]
    assert report["files"][0]["status"] == "done", report["files"][0]["error"]
    # the sentence encoder and the head were exported once, for torch-free use next time
    assert (home / "onnx" / "bge-micro-v2.fp32.onnx").is_file()
    assert (home / "onnx" / "instructir-7d-lm.fp32.onnx").is_file()
    from PIL import Image

    out = np.asarray(Image.open(tmp_path / "out" / RAINY.name))
    assert out.shape == np.asarray(Image.open(RAINY)).shape
