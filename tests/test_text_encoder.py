"""InstructIR's text side: our BERT loads Hugging Face BertModel tensors strictly; the ONNX +
tokenizers path (no torch) gives the PyTorch reference's pooled embedding; a prompt becomes
the image model's embedding input. A tiny random BERT and a tiny WordPiece tokenizer.json
built here stand in for bge-micro-v2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from restorer.archs.bert import BertModel, load_bert, read_weights, sentence_embedding
from restorer.convert.text import export_text_encoder
from restorer.archs.instructir import InstructIR, LanguageHead
from restorer.convert.text import export_language_head
from restorer.zoo.catalog import load_catalog
from restorer.pipelines.text_encoder import TextEncoder, degradation_probabilities, mean_pool_normalize
from tests.manifests import FIXTURES, load_safetensors

HERE = FIXTURES / "instructir"
TOL = 1e-5
REPO = Path(__file__).resolve().parents[1]

VOCAB = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] , . ! ? a it the this my from of please remove noise rain "
    "haze blur fix make brighter photo image picture dark sharp ##en ##er ##ness ##s ##y"
).split()
# Hidden 384 as bge-micro-v2 (so the tiny InstructIR head fixture, 384 -> 32, can follow it),
# its 12 heads; everything else tiny. 16 positions make truncation easy to reach.
TINY_BERT = dict(
    vocab_size=len(VOCAB),
    hidden_size=384,
    num_hidden_layers=2,
    num_attention_heads=12,
    intermediate_size=96,
    max_position_embeddings=16,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    pad_token_id=0,
    hidden_act="gelu",
)
PROMPTS = ["Remove the noise, please!", "make it brighter", "Fix the blurry photo of my dark picture."]


def hf_bert_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Hugging Face BertModel (with pooler), written out here
    independently of restorer.archs.bert."""
    h, i = config["hidden_size"], config["intermediate_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (config["vocab_size"], h),
        "embeddings.position_embeddings.weight": (config["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + name + ".weight"] = (h, h)
            shapes[p + name + ".bias"] = (h,)
        shapes[p + "attention.output.LayerNorm.weight"] = (h,)
        shapes[p + "attention.output.LayerNorm.bias"] = (h,)
        shapes[p + "intermediate.dense.weight"] = (i, h)
        shapes[p + "intermediate.dense.bias"] = (i,)
        shapes[p + "output.dense.weight"] = (h, i)
        shapes[p + "output.dense.bias"] = (h,)
        shapes[p + "output.LayerNorm.weight"] = (h,)
        shapes[p + "output.LayerNorm.bias"] = (h,)
    shapes["pooler.dense.weight"] = (h, h)
    shapes["pooler.dense.bias"] = (h,)
    return shapes


def random_hf_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under HF names; LayerNorms near 1/0 and moderate scales, so that
    attention is neither uniform nor one-hot."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in hf_bert_shapes(config).items():
        noise = torch.randn(shape, generator=g)
        if "LayerNorm.weight" in name:
            out[name] = 1.0 + 0.3 * noise
        elif name.endswith("embeddings.weight"):
            out[name] = noise
        elif name.endswith(".weight"):
            out[name] = noise / shape[1] ** 0.5 * 1.5
        else:
            out[name] = 0.1 * noise
    return out


def build_tokenizer_json(path: Path) -> Path:
    """A BERT-style (uncased) WordPiece tokenizer.json, as bge-micro-v2's."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ids = {token: i for i, token in enumerate(VOCAB)}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None, clean_text=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """What installing the encoder leaves: tokenizer.json and the ONNX file exported from an
    fp16 pytorch_model.bin (the released format); plus the fp32 PyTorch reference."""
    root = tmp_path_factory.mktemp("bge")
    weights = {k: v.half() for k, v in random_hf_state_dict(TINY_BERT).items()}
    weights["embeddings.position_ids"] = torch.arange(16)[None]  # saved by old transformers
    torch.save(weights, root / "pytorch_model.bin")
    (root / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"], **TINY_BERT}))
    onnx_path = export_text_encoder(root / "pytorch_model.bin", root / "config.json", root / "encoder.onnx")
    reference = load_bert(weights, **TINY_BERT)
    return onnx_path, build_tokenizer_json(root / "tokenizer.json"), reference


@pytest.fixture(scope="module")
def encoder(installed):
    onnx_path, tokenizer_json, _ = installed
    return TextEncoder(onnx_path, tokenizer_json)


def _reference(model: BertModel, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return sentence_embedding(model, torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def test_hf_bert_names_load_strictly():
    weights = random_hf_state_dict(TINY_BERT)
    model = load_bert(weights, **TINY_BERT)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == hf_bert_shapes(TINY_BERT)
    without_pooler = {k: v for k, v in weights.items() if not k.startswith("pooler.")}
    assert load_bert(without_pooler, **TINY_BERT).pooler is None
    with pytest.raises(RuntimeError, match="Unexpected"):
        load_bert({**weights, "encoder.layer.9.output.dense.bias": weights["pooler.dense.bias"]}, **TINY_BERT)
    missing = dict(weights)
    del missing["encoder.layer.1.attention.self.key.weight"]
    with pytest.raises(RuntimeError, match="Missing"):
        load_bert(missing, **TINY_BERT)


def test_catalog_bge_micro_v2_has_the_released_shapes():
    """bge-micro-v2 per its config.json: 55 tensors, 17.4 M parameters (model card)."""
    spec = load_catalog().get("bge-micro-v2")
    with torch.device("meta"):
        model = BertModel(**spec.hparams)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == hf_bert_shapes(spec.hparams)
    assert sum(p.numel() for p in model.parameters()) == 17_389_824
    assert spec.hparams["hidden_size"] == load_catalog().get("instructir-7d-lm").hparams["embedding_dim"]


def test_read_weights_safetensors_and_pickle(tmp_path):
    from safetensors.torch import save_file

    weights = {k: v.half() for k, v in random_hf_state_dict(TINY_BERT, seed=1).items()}
    save_file(weights, str(tmp_path / "model.safetensors"))
    torch.save(weights, tmp_path / "pytorch_model.bin")
    for name in ("model.safetensors", "pytorch_model.bin"):
        loaded = read_weights(tmp_path / name)
        assert loaded.keys() == weights.keys()
        assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_tokenizer_as_transformers_would(encoder):
    ids, mask = encoder.tokenize(["Remove the NOISE!", "make it sharper"])
    token = {t: i for i, t in enumerate(VOCAB)}
    first = [token[t] for t in ("[CLS]", "remove", "the", "noise", "!", "[SEP]")]
    second = [token[t] for t in ("[CLS]", "make", "it", "sharp", "##er", "[SEP]")]
    assert ids.tolist() == [first, second] and mask.tolist() == [[1] * 6, [1] * 6]
    ids, mask = encoder.tokenize(["fix it", "remove the noise from my photo"])
    assert ids.shape == (2, 8) and ids[0, 4:].tolist() == [0] * 4 and mask.sum(1).tolist() == [4, 8]
    assert ids.dtype == np.int64 and mask.dtype == np.int64


def test_onnx_path_equals_torch_reference(installed, encoder):
    _, _, reference = installed
    got = encoder.encode(PROMPTS)
    ids, mask = encoder.tokenize(PROMPTS)
    assert len(set(mask.sum(1).tolist())) == 3  # three lengths: padding is exercised
    expected = _reference(reference, ids, mask)
    assert got.shape == (3, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    # Not the [CLS] vector, not unnormalised: the pooling the head was trained on.
    with torch.no_grad():
        cls = reference(torch.from_numpy(ids), torch.from_numpy(mask))[:, 0].numpy()
    assert np.abs(got - cls / np.linalg.norm(cls, axis=1, keepdims=True)).max() > 1e-2


def test_padding_does_not_change_an_embedding(encoder):
    together = encoder.encode(PROMPTS)
    alone = np.concatenate([encoder.encode([p]) for p in PROMPTS])
    np.testing.assert_allclose(together, alone, atol=TOL, rtol=0)
    assert np.abs(together[0] - together[1]).max() > 1e-2  # different prompts differ


def test_long_prompt_is_truncated_at_the_position_table(installed, encoder):
    """Upstream never truncates (no max length) and would fail past the position table; we
    keep the first max_length tokens, [CLS] ... [SEP] included."""
    _, _, reference = installed
    assert encoder.max_length == TINY_BERT["max_position_embeddings"]  # read from the ONNX metadata
    long_prompt = "please remove the rain and the haze from this dark photo of my picture " * 4
    ids, mask = encoder.tokenize([long_prompt, "fix it"])
    assert ids.shape == (2, 16) and ids[0, -1] == VOCAB.index("[SEP]") and mask[0].all()
    got = encoder.encode([long_prompt, "fix it"])
    np.testing.assert_allclose(got, _reference(reference, ids, mask), atol=TOL, rtol=0)
    untruncated = np.array([[2] + [VOCAB.index("rain")] * 20 + [3]], dtype=np.int64)
    with pytest.raises(IndexError):
        _reference(reference, untruncated, np.ones_like(untruncated))


def test_encode_edge_cases(encoder):
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("a single string is not a list")
    hidden = np.zeros((1, 3, 4), dtype=np.float32)
    assert np.all(np.isfinite(mean_pool_normalize(hidden, np.array([[1, 0, 0]]))))


RESTORE_SCRIPT = """
import json, sys
import numpy as np
from restorer.pipelines.text_encoder import LanguageHeadRunner, TextEncoder, instruction_embedding
encoder = TextEncoder(sys.argv[1], sys.argv[2])
head = LanguageHeadRunner(sys.argv[3])
embedding, logits = instruction_embedding(json.loads(sys.argv[4]), encoder, head)
single, _ = instruction_embedding("remove the noise", encoder, head)
np.savez(sys.argv[5], embedding=embedding, logits=logits, single=single)
print("torch imported:", "torch" in sys.modules)
"""


def test_prompt_to_image_model_input_without_torch(installed, tmp_path):
    """The restore-time path in a fresh interpreter: prompt -> ONNX encoder -> ONNX head ->
    the image model's embedding, equal to the PyTorch chain, and torch never imported."""
    onnx_path, tokenizer_json, reference = installed
    head = LanguageHead(embedding_dim=384, hidden_dim=32, num_classes=7)
    tiny_head = {k: torch.from_numpy(v) for k, v in load_safetensors(HERE / "instructir_tiny.lmhead.safetensors").items()}
    head.load_state_dict(tiny_head, strict=True)
    head_onnx = export_language_head(head.eval(), tmp_path / "head.onnx")
    out = tmp_path / "out.npz"
    run = subprocess.run(
        [sys.executable, "-c", RESTORE_SCRIPT, str(onnx_path), str(tokenizer_json), str(head_onnx), json.dumps(PROMPTS), str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "torch imported: False" in run.stdout
    result = np.load(out)

    encoder = TextEncoder(onnx_path, tokenizer_json)
    ids, mask = encoder.tokenize(PROMPTS)
    with torch.no_grad():
        expected_embedding, expected_logits = head(torch.from_numpy(_reference(reference, ids, mask)))
    assert result["embedding"].shape == (3, 32) and result["logits"].shape == (3, 7)
    assert result["single"].shape == (1, 32)
    np.testing.assert_allclose(result["embedding"], expected_embedding.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(result["logits"], expected_logits.numpy(), atol=TOL, rtol=0)
    probabilities = degradation_probabilities(result["logits"])
    assert len(probabilities) == 3 and abs(sum(probabilities[0].values()) - 1.0) < 1e-6

    # ... and the image model conditioned on it gives the reference chain's restoration.
    model = InstructIR(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 2, 1], dec_blk_nums=[1, 1, 1], txtdim=32)
    tiny_image = {k: torch.from_numpy(v) for k, v in load_safetensors(HERE / "instructir_tiny.safetensors").items()}
    model.load_state_dict(tiny_image, strict=True)
    image = torch.from_numpy(np.load(HERE / "instructir_tiny.input.npy")).repeat(3, 1, 1, 1)
    with torch.no_grad():
        ours = model.eval()(image, torch.from_numpy(result["embedding"]))
        expected = model(image, expected_embedding)
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), atol=TOL, rtol=0)


def test_same_as_transformers_bert_when_available(installed, encoder):
    """Where transformers is installed: its BertModel + upstream's pooling on the same weights
    and tokens equals the ONNX path (it is not a dependency; the check is skipped otherwise)."""
    transformers = pytest.importorskip("transformers")
    _, _, reference = installed
    config = transformers.BertConfig(**TINY_BERT, attn_implementation="eager")
    hf = transformers.BertModel(config).eval()
    hf.load_state_dict({k: v for k, v in reference.state_dict().items()}, strict=True)
    ids, mask = encoder.tokenize(PROMPTS)
    with torch.no_grad():
        hidden = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))[0]
    m = torch.from_numpy(mask)[..., None].float()
    pooled = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)
    np.testing.assert_allclose(encoder.encode(PROMPTS), pooled.numpy(), atol=TOL, rtol=0)
