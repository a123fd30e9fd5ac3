"""InstructIR (image model + language head) against the released manifests, the official
code's tiny golden fixture, and the released head's real numbers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from restorer.archs import arch_class, build
from restorer.archs.instructir import InstructIR, LanguageHead, load_language_head
from restorer.convert.text import export_language_head
from restorer.zoo.catalog import load_catalog
from restorer.convert.graph import export_onnx, parity, run_onnx
from restorer.pipelines.text_encoder import DEGRADATION_CLASSES, LanguageHeadRunner
from tests.manifests import FIXTURES, assert_loads_strictly, load_safetensors

HERE = FIXTURES / "instructir"
TORCH_TOL = 1e-5  # the fixture's tolerance on CPU fp32
ORT_TOL = 1e-4  # ... and through ONNX Runtime
TINY_IMAGE = dict(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 2, 1], dec_blk_nums=[1, 1, 1], txtdim=32)
TINY_HEAD = dict(embedding_dim=384, hidden_dim=32, num_classes=7)
REAL_HEAD_SHA256 = "b239e5d5dbc811813a90e709f9647dead0e35a96a294a7d6c5263da549016fe6"


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in load_safetensors(path).items()}


@pytest.fixture(scope="module")
def tiny():
    model = InstructIR(**TINY_IMAGE)
    model.load_state_dict(_tensors(HERE / "instructir_tiny.safetensors"), strict=True)
    head = LanguageHead(**TINY_HEAD)
    head.load_state_dict(_tensors(HERE / "instructir_tiny.lmhead.safetensors"), strict=True)
    return model.eval(), head.eval()


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    """The tiny image model exported once through the project's exporter (batch 2 examples:
    torch.export specialises a batch of 1)."""
    model, _ = tiny
    path = tmp_path_factory.mktemp("instructir") / "tiny.onnx"
    example = {"image": torch.rand(2, 3, 24, 40), "embedding": torch.rand(2, 32)}
    return export_onnx(model, example, path, dynamic_hw=True)


def _inputs():
    return np.load(HERE / "instructir_tiny.input.npy"), np.load(HERE / "instructir_tiny.embedding.npy")


def test_registered():
    assert arch_class("InstructIR") is InstructIR
    assert arch_class("InstructIRLMHead") is LanguageHead


def test_released_image_model_manifest_loads_strictly():
    """The catalog's hyperparameters build exactly the released im_instructir-7d.pt tensors."""
    spec = load_catalog().get("instructir-7d")
    with torch.device("meta"):
        model = build(spec.arch, spec.hparams)
    manifest = assert_loads_strictly(model, HERE / "im_instructir-7d.keys.json")
    assert not list(model.buffers())
    assert manifest["params"] == 15_843_363
    assert model.pad_multiple == 16


def test_released_head_manifest_loads_strictly():
    spec = load_catalog().get("instructir-7d-lm")
    with torch.device("meta"):
        head = build(spec.arch, spec.hparams)
    assert_loads_strictly(head, HERE / "lm_instructir-7d.keys.json")
    assert not list(head.buffers())


def test_catalog_entries_tie_together():
    catalog = load_catalog()
    image = catalog.get("instructir-7d")
    head = catalog.get("instructir-7d-lm")
    encoder = catalog.get("bge-micro-v2")
    assert image.needs == ("instructir-7d-lm", "bge-micro-v2")
    assert tuple(image.extra["classes"]) == DEGRADATION_CLASSES == tuple(head.extra["classes"])
    assert head.hparams["num_classes"] == len(DEGRADATION_CLASSES)
    assert head.hparams["embedding_dim"] == encoder.hparams["hidden_size"]
    assert image.hparams["txtdim"] == head.hparams["hidden_dim"]
    assert image.pad_multiple == 1  # the forward pads itself (zeros); a reflect pad outside would differ
    assert {f.name for f in encoder.files} == {"pytorch_model.bin", "tokenizer.json"}
    assert not catalog.get("instructir-5d").released


def test_tiny_head_matches_official(tiny):
    _, head = tiny
    _, sentence = _inputs()
    with torch.no_grad():
        embedding, logits = head(torch.from_numpy(sentence))
    np.testing.assert_allclose(embedding.numpy(), np.load(HERE / "instructir_tiny.text_embd.npy"), atol=TORCH_TOL, rtol=0)
    np.testing.assert_allclose(logits.numpy(), np.load(HERE / "instructir_tiny.deg_logits.npy"), atol=TORCH_TOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(embedding.numpy(), axis=1), 1.0, atol=1e-6)


def test_tiny_image_model_matches_official(tiny):
    """21x30 is not a multiple of 8: the forward's own zero padding and crop are exercised."""
    model, head = tiny
    image, sentence = _inputs()
    with torch.no_grad():
        embedding, _ = head(torch.from_numpy(sentence))
        out = model(torch.from_numpy(image), embedding).numpy()
    assert out.shape == image.shape
    np.testing.assert_allclose(out, np.load(HERE / "instructir_tiny.output.npy"), atol=TORCH_TOL, rtol=0)


def test_instruction_changes_the_output(tiny):
    model, _ = tiny
    image, _ = _inputs()
    embedding = torch.from_numpy(np.load(HERE / "instructir_tiny.text_embd.npy"))
    with torch.no_grad():
        a = model(torch.from_numpy(image), embedding)
        b = model(torch.from_numpy(image), -embedding)
    assert float((a - b).abs().max()) > 1e-2


def test_onnx_inputs_and_golden_output(tiny_onnx):
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "embedding"]
    image, _ = _inputs()
    embedding = np.load(HERE / "instructir_tiny.text_embd.npy")
    got = run_onnx(tiny_onnx, {"image": image, "embedding": embedding})
    np.testing.assert_allclose(got, np.load(HERE / "instructir_tiny.output.npy"), atol=ORT_TOL, rtol=0)


@pytest.mark.parametrize("shape", [(2, 3, 17, 43), (1, 3, 9, 5), (1, 3, 32, 24)])
def test_onnx_parity_at_other_sizes(tiny, tiny_onnx, shape):
    model, _ = tiny
    rng = np.random.default_rng(sum(shape))
    image = rng.random(shape, dtype=np.float32)
    embedding = rng.standard_normal((shape[0], 32)).astype(np.float32)
    result = parity(model, tiny_onnx, {"image": image, "embedding": embedding}, tolerance=ORT_TOL)
    assert result.ok, result


def test_head_onnx_matches_official(tiny, tmp_path):
    _, head = tiny
    runner = LanguageHeadRunner(export_language_head(head, tmp_path / "head.onnx"))
    _, sentence = _inputs()
    embedding, logits = runner(np.concatenate([sentence, sentence]))
    assert embedding.shape == (2, 32) and logits.shape == (2, 7)
    np.testing.assert_allclose(embedding[1:], np.load(HERE / "instructir_tiny.text_embd.npy"), atol=ORT_TOL, rtol=0)
    np.testing.assert_allclose(logits[1:], np.load(HERE / "instructir_tiny.deg_logits.npy"), atol=ORT_TOL, rtol=0)


def test_head_from_released_file_format(tmp_path):
    """load_language_head reads a bare state dict saved by torch.save (the released format),
    with weights_only, and takes the sizes from the tensors."""
    torch.manual_seed(3)
    head = LanguageHead(embedding_dim=384, hidden_dim=256, num_classes=7).eval()
    torch.save(head.state_dict(), tmp_path / "lm.pt")
    loaded = load_language_head(tmp_path / "lm.pt")
    sentence = torch.from_numpy(np.load(HERE / "lm_instructir-7d.embedding.npy"))
    with torch.no_grad():
        for a, b in zip(head(sentence), loaded(sentence)):
            assert torch.equal(a, b)


def _real_head_file() -> Path | None:
    """The released lm_instructir-7d.pt, where a user or the model store has it."""
    candidates = [os.environ.get("RESTORER_INSTRUCTIR_LM_HEAD", "")]
    try:
        from restorer.zoo import layout
        spec = load_catalog().get("instructir-7d-lm")
        candidates += [str(p) for p in layout.weight_paths(spec)]
    except Exception:  # the store may not be importable in a minimal checkout
        pass
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.mark.skipif(_real_head_file() is None, reason="released lm_instructir-7d.pt not installed")
def test_real_head_numbers(tmp_path):
    """The released head on the fixture's 8 unit vectors, in PyTorch and ONNX Runtime."""
    path = _real_head_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == REAL_HEAD_SHA256
    head = load_language_head(path)
    sentence = np.load(HERE / "lm_instructir-7d.embedding.npy")
    expected_embedding = np.load(HERE / "lm_instructir-7d.text_embd.npy")
    expected_logits = np.load(HERE / "lm_instructir-7d.deg_logits.npy")
    with torch.no_grad():
        embedding, logits = (t.numpy() for t in head(torch.from_numpy(sentence)))
    np.testing.assert_allclose(embedding, expected_embedding, atol=TORCH_TOL, rtol=0)
    np.testing.assert_allclose(logits, expected_logits, atol=TORCH_TOL, rtol=0)
    assert logits.argmax(1).tolist() == [3, 1, 0, 4, 4, 6, 4, 4]
    runner = LanguageHeadRunner(export_language_head(head, tmp_path / "head.onnx"))
    embedding, logits = runner(sentence)
    np.testing.assert_allclose(embedding, expected_embedding, atol=ORT_TOL, rtol=0)
    np.testing.assert_allclose(logits, expected_logits, atol=ORT_TOL, rtol=0)
