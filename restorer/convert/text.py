"""InstructIR's text side -> ONNX: the BERT sentence encoder and the language head, each
exported once at install time and checked against PyTorch, so restoring needs no torch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from restorer.archs.bert import BertModel, config_from_hf, load_bert, read_weights
from restorer.archs.instructir import LanguageHead
from restorer.convert.graph import FP32_TOLERANCE, Parity, write_onnx
from restorer.run.onnx import create_session
from restorer.run.torch import load_module
from restorer.zoo.layout import weights_path


def export_bert_onnx(model: BertModel, path: str | os.PathLike, fold_constants: bool = True) -> Path:
    """Export to ONNX (opset 18, written atomically): inputs "input_ids" and "attention_mask"
    (int64 [batch, sequence], both dynamic), output "last_hidden_state" [batch, sequence, hidden].

    The file's metadata records max_length (the position table size, the most tokens it takes)
    and pad_token_id, which TextEncoder reads.
    """
    example = {
        "input_ids": torch.tensor([[1, 2, 3], [1, 2, 0]], dtype=torch.int64),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.int64),
    }
    batch = torch.export.Dim("batch", min=1, max=1024)
    sequence = torch.export.Dim("sequence", min=1, max=model.max_position_embeddings)
    shapes = {name: {0: batch, 1: sequence} for name in example}
    metadata = {"max_length": model.max_position_embeddings, "pad_token_id": model.pad_token_id}
    return write_onnx(model, example, path, shapes, ["last_hidden_state"], metadata=metadata,
                      fold_constants=fold_constants)


def export_text_encoder(
    weights_path: str | os.PathLike,
    config: dict | str | os.PathLike,
    onnx_path: str | os.PathLike,
) -> Path:
    """Install step: a Hugging Face BERT checkpoint (model.safetensors or pytorch_model.bin;
    fp16 is upcast) -> the ONNX file restorer.pipelines.text_encoder.TextEncoder runs.

    `config` is the constructor kwargs (a catalog entry's hparams) or a config.json path.
    """
    if not isinstance(config, dict):
        config = config_from_hf(json.loads(Path(config).read_text()))
    model = load_bert(read_weights(weights_path), **config)
    return export_bert_onnx(model, onnx_path)


def export_language_head(head: LanguageHead, path: str | Path, fold_constants: bool = True) -> Path:
    """Export the head to ONNX: input "sentence_embedding" [B, embedding_dim], outputs
    "embedding" [B, hidden_dim] and "logits" [B, num_classes], batch dynamic.

    The restore-time path (restorer.pipelines.text_encoder.InstructionEncoder) reads the outputs by
    position, so a head exported by the generic restorer.convert.graph.export_onnx works as well.
    """
    sample = torch.zeros(2, head.fc1.in_features)
    batch = torch.export.Dim("batch", min=1, max=1024)
    return write_onnx(head, {"sentence_embedding": sample}, path, {"sentence_embedding": {0: batch}},
                      ["embedding", "logits"], fold_constants=fold_constants)


def _export_text_encoder(spec, target: Path) -> Parity:
    """bge-micro-v2 (a BERT) -> ONNX: token ids and mask in, last hidden state out; the
    torch-free TextEncoder pools it. Checked on a padded batch of random token ids."""
    model = load_bert(read_weights(weights_path(spec)), **spec.hparams)
    export_bert_onnx(model, target)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, spec.hparams["vocab_size"], (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        expected = model(ids, mask).numpy()
    got = _run_raw(target, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    keep = mask.numpy().astype(bool)  # padded positions carry no meaning
    return Parity(float(np.max(np.abs(expected - got)[keep])), FP32_TOLERANCE)


def _export_language_head(spec, target: Path) -> Parity:
    """InstructIR's language head -> ONNX (two outputs: the embedding and the logits)."""
    head = load_module(spec)
    export_language_head(head, target)
    x = torch.randn(3, spec.hparams["embedding_dim"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [t.numpy() for t in head(x)]
    got = _run_raw(target, {"sentence_embedding": x.numpy()})
    return Parity(max(float(np.max(np.abs(e - g))) for e, g in zip(expected, got)), FP32_TOLERANCE)


def _run_raw(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return create_session(path, "cpu").session.run(None, feeds)


TEXT_EXPORTERS = {"BertModel": _export_text_encoder, "InstructIRLMHead": _export_language_head}
