"""Instruction text -> InstructIR's conditioning, without torch.

    prompt --TextEncoder (tokenizers + ONNX BERT + masked mean pool + L2 norm)--> [n, 384]
           --LanguageHeadRunner (ONNX: Linear, L2 norm; Linear)--> embedding [n, 256], logits [n, 7]

The embedding is the image model's second input ("embedding"); the logits are its degradation
classifier, in DEGRADATION_CLASSES order. Both ONNX files are made once at install time
(restorer.archs.bert.export_text_encoder, restorer.archs.instructir.export_language_head)
from the installed weights; nothing here reaches a hub.

Truncation: the official code asks the tokenizer to truncate but gives no max length, and
bge-micro-v2's tokenizer defines none, so nothing is cut and a prompt over 512 tokens crashes
the position embedding. Here prompts are truncated to the encoder's max_length (its position
table size, recorded in the ONNX file): identical for every prompt the official code accepts,
and a long prompt keeps its first 512 tokens instead of failing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# The released head's degradation classes in logit order (upstream datasets.DEG_MAP):
# noise, blur, rain, haze, low light, super-resolution, enhancement. Upstream's config comment
# swaps the last two; the training code is not public, so 5/6 stay unconfirmed.
DEGRADATION_CLASSES = ("noise", "blur", "rain", "haze", "lol", "sr", "en")

DEFAULT_MAX_LENGTH = 512  # BERT's position table, when the ONNX file does not say


def _session(path: str | os.PathLike, device: str):
    from restorer.run.onnx import create_session

    return create_session(path, device).session


def mean_pool_normalize(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean of hidden [n, L, d] over tokens whose mask is 1, then L2-normalised -> [n, d]."""
    mask = attention_mask.astype(np.float32)[..., None]
    pooled = (hidden.astype(np.float32) * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)


class TextEncoder:
    """A BERT sentence encoder run by ONNX Runtime, tokenised with the `tokenizers` library.

    `onnx_path`: the file restorer.archs.bert.export_bert_onnx writes (inputs input_ids and
    attention_mask; a token_type_ids input, as in other BERT exports, is fed zeros).
    `tokenizer_json_path`: the model's Hugging Face tokenizer.json.
    `max_length`: tokens kept per prompt, [CLS] and [SEP] included; default: the ONNX file's
    metadata, else 512.
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        tokenizer_json_path: str | os.PathLike,
        *,
        max_length: int | None = None,
        device: str = "cpu",
    ):
        from tokenizers import Tokenizer

        self.session = _session(onnx_path, device)
        self.input_names = [i.name for i in self.session.get_inputs()]
        missing = {"input_ids", "attention_mask"} - set(self.input_names)
        if missing:
            raise ValueError(f"{onnx_path}: not a BERT encoder export (no input {', '.join(sorted(missing))})")
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.max_length = int(max_length or metadata.get("max_length", DEFAULT_MAX_LENGTH))

        self.tokenizer = Tokenizer.from_file(str(Path(tokenizer_json_path)))
        pad_token = "[PAD]"
        pad_id = self.tokenizer.token_to_id(pad_token)
        if pad_id is None:
            pad_id = int(metadata.get("pad_token_id", 0))
            pad_token = self.tokenizer.id_to_token(pad_id) or pad_token
        # Pad on the right to the longest prompt of the batch, as transformers' padding=True.
        self.tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token)
        self.tokenizer.enable_truncation(max_length=self.max_length)

    @property
    def dim(self) -> int:
        return int(self.session.get_outputs()[0].shape[-1])

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and attention_mask, int64 [n, longest]."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not a string")
        encodings = self.tokenizer.encode_batch(list(prompts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """Unit-norm sentence embeddings, float32 [n, dim]."""
        if not len(prompts):
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = self.tokenize(prompts)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]
        return mean_pool_normalize(hidden, mask)


class LanguageHeadRunner:
    """InstructIR's language head as exported to ONNX: sentence embeddings [n, 384] ->
    (embedding [n, 256], logits [n, 7]). Outputs are read by position, so an export with
    other output names works too."""

    def __init__(self, onnx_path: str | os.PathLike, *, device: str = "cpu"):
        self.session = _session(onnx_path, device)
        self.input_name = self.session.get_inputs()[0].name
        if len(self.session.get_outputs()) != 2:
            raise ValueError(f"{onnx_path}: expected the two outputs (embedding, logits) of the language head")

    def __call__(self, sentence_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {self.input_name: np.ascontiguousarray(sentence_embeddings, dtype=np.float32)}
        embedding, logits = self.session.run(None, feeds)
        return embedding, logits


def instruction_embedding(
    prompt: str | Sequence[str],
    text_encoder: TextEncoder,
    head: LanguageHeadRunner,
) -> tuple[np.ndarray, np.ndarray]:
    """A prompt (or several) -> (the image model's "embedding" input [n, 256], the degradation
    logits [n, len(DEGRADATION_CLASSES)]); n = 1 for a single string."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    return head(text_encoder.encode(prompts))


def degradation_probabilities(logits: np.ndarray) -> list[dict[str, float]]:
    """Softmax of the head's logits, per prompt, keyed by DEGRADATION_CLASSES."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return [dict(zip(DEGRADATION_CLASSES, map(float, row))) for row in p]
