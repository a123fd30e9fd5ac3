"""InstructIR's second input: the user's own words, as the embedding its image model reads.

prompt -> the sentence encoder (bge-micro-v2, ONNX, tokenised with `tokenizers`) -> the
language head (ONNX) -> a unit vector. Both run without torch: each becomes an ONNX file the
first time it is needed (filled into restorer's shipped template) and is kept in the store.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from restorer.pipelines.text_encoder import (
    LanguageHeadRunner,
    TextEncoder,
    instruction_embedding,
)
from restorer.run.loader import onnx_model
from restorer.zoo import layout
from restorer.zoo.catalog import ModelSpec, load_catalog


def _needed(spec: ModelSpec, arch: str) -> ModelSpec:
    catalog = load_catalog()
    for model_id in spec.needs:
        part = catalog.get(model_id)
        if part.arch == arch:
            return part
    raise ValueError(f"catalog entry '{spec.id}' names no {arch} in `needs`")


def _onnx(spec: ModelSpec) -> str:
    return str(onnx_model(spec))


@lru_cache(maxsize=2)
def _encoders(model_id: str):
    spec = load_catalog().get(model_id)
    encoder_spec = _needed(spec, "BertModel")
    tokenizer = next(f.name for f in encoder_spec.files if f.name.endswith("tokenizer.json"))
    encoder = TextEncoder(_onnx(encoder_spec), layout.model_dir(encoder_spec) / tokenizer)
    head = LanguageHeadRunner(_onnx(_needed(spec, "InstructIRLMHead")))
    return encoder, head


def instruction_inputs(step) -> dict[str, np.ndarray]:
    """{"embedding": [1, dim]} for an InstructIR step, from step.prompt (the user's words)."""
    encoder, head = _encoders(step.model)
    embedding, _logits = instruction_embedding(step.prompt, encoder, head)
    return {"embedding": np.asarray(embedding, dtype=np.float32)}
