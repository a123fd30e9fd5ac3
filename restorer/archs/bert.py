"""A small BERT encoder (Devlin et al., 2019) that loads Hugging Face `BertModel` checkpoints
by their tensor names, strictly, without depending on transformers.

It exists for InstructIR's sentence encoder (TaylorAI/bge-micro-v2: 3 layers, hidden 384,
12 heads), which is exported to ONNX once at install time (`export_text_encoder`) and run
torch-free by restorer.pipelines.text_encoder.TextEncoder at restore time. `sentence_embedding` is the
PyTorch reference of what TextEncoder computes: masked mean pooling of the last hidden state,
then L2 normalisation (the pooling InstructIR uses for bge-micro-v2; not the [CLS] vector).

Only what that needs is supported: absolute position embeddings, exact (erf) GELU, encoder
only (no cross-attention, no cache). Dropout is omitted: the encoder is only ever evaluated.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Keys of a Hugging Face config.json that the constructor takes.
CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "hidden_act",
)

# Buffers older transformers versions saved with the weights; they carry no information.
IGNORED_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")


class BertEmbeddings(nn.Module):
    def __init__(self, vocab_size, hidden_size, max_position_embeddings, type_vocab_size, layer_norm_eps, pad_token_id):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)[None]
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, hidden_size, num_attention_heads):
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}")
        self.heads = num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + additive_mask
        context = scores.softmax(-1) @ v
        b, _, n, _ = context.shape
        return context.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)


class BertDenseNorm(nn.Module):
    """dense, then LayerNorm of (that + residual): BERT's BertSelfOutput and BertOutput."""

    def __init__(self, in_features, hidden_size, layer_norm_eps):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden_size, num_attention_heads, layer_norm_eps):
        super().__init__()
        self.self = BertSelfAttention(hidden_size, num_attention_heads)
        self.output = BertDenseNorm(hidden_size, hidden_size, layer_norm_eps)

    def forward(self, x, additive_mask):
        return self.output(self.self(x, additive_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden_size, intermediate_size):
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))  # exact (erf) GELU, transformers' "gelu"


class BertLayer(nn.Module):
    def __init__(self, hidden_size, num_attention_heads, intermediate_size, layer_norm_eps):
        super().__init__()
        self.attention = BertAttention(hidden_size, num_attention_heads, layer_norm_eps)
        self.intermediate = BertIntermediate(hidden_size, intermediate_size)
        self.output = BertDenseNorm(intermediate_size, hidden_size, layer_norm_eps)

    def forward(self, x, additive_mask):
        x = self.attention(x, additive_mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, num_hidden_layers, **layer_kwargs):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(**layer_kwargs) for _ in range(num_hidden_layers)])

    def forward(self, x, additive_mask):
        for layer in self.layer:
            x = layer(x, additive_mask)
        return x


class BertPooler(nn.Module):
    """tanh(dense([CLS])): present in released checkpoints, unused by mean pooling."""

    def __init__(self, hidden_size):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden):
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """BERT encoder; constructor names are those of a Hugging Face BertConfig.

    forward(input_ids [B, L] int64, attention_mask [B, L] int64 of 0/1) -> last_hidden_state
    [B, L, hidden_size]. Token type ids are all 0 (single-segment input).
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        hidden_act: str = "gelu",
        add_pooling_layer: bool = True,
    ):
        super().__init__()
        if hidden_act != "gelu":
            raise ValueError(f"unsupported hidden_act {hidden_act!r} (only the exact 'gelu')")
        self.max_position_embeddings = max_position_embeddings
        self.pad_token_id = pad_token_id
        self.embeddings = BertEmbeddings(
            vocab_size, hidden_size, max_position_embeddings, type_vocab_size, layer_norm_eps, pad_token_id
        )
        self.encoder = BertEncoder(
            num_hidden_layers,
            hidden_size=hidden_size,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            layer_norm_eps=layer_norm_eps,
        )
        self.pooler = BertPooler(hidden_size) if add_pooling_layer else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # As transformers: masked keys get the most negative float added to their scores.
        keep = attention_mask.to(torch.float32)[:, None, None, :]
        additive_mask = (1.0 - keep) * torch.finfo(torch.float32).min
        x = self.embeddings(input_ids, torch.zeros_like(input_ids))
        return self.encoder(x, additive_mask)


def sentence_embedding(model: BertModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The PyTorch reference: mean of the last hidden state over unmasked tokens, L2-normalised
    (InstructIR's mean_pooling + F.normalize for bge-micro-v2)."""
    hidden = model(input_ids, attention_mask)
    mask = attention_mask[..., None].to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2.0, dim=1, eps=1e-12)


def config_from_hf(config: dict) -> dict:
    """The constructor kwargs out of a Hugging Face config.json dict."""
    if config.get("model_type", "bert") != "bert":
        raise ValueError(f"not a BERT config: model_type {config.get('model_type')!r}")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"unsupported position_embedding_type {config['position_embedding_type']!r}")
    return {k: config[k] for k in CONFIG_KEYS if k in config}


def load_bert(state_dict: dict[str, torch.Tensor], **config) -> BertModel:
    """A BertModel holding a Hugging Face BertModel state dict, loaded strictly, in float32.

    The pooler is built only when the checkpoint has one; buffers that old transformers versions
    saved (position_ids) are dropped. Anything else missing or extra is an error.
    """
    weights = {k: v.to(torch.float32) for k, v in state_dict.items() if k not in IGNORED_KEYS}
    config = {k: v for k, v in config.items() if k != "add_pooling_layer"}
    model = BertModel(**config, add_pooling_layer="pooler.dense.weight" in weights)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a torch pickle (.bin/.pt) read with weights_only."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)



