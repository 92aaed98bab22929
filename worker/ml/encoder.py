"""model.name "encoder": a pretrained transformer from a local folder (BASE_MODELS_DIR) with a linear head.

transformers loads it with local files only and offline mode on: nothing is ever fetched from a hub, and only
model.safetensors is read (never a pickle). The classifier takes the same (input_ids, attention_mask) as every
other model here and returns logits, so training, export, parity and serving treat it like the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before transformers is imported: it reads these once, and then refuses any download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoConfig, AutoModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from core.ml.tokenizer import TextEncoder  # noqa: E402
from core.spec import ModelSpec  # noqa: E402

# A worker's log is not a terminal: no "Loading weights" progress bars.
hf_logging.disable_progress_bar()


# transformers' default attention (torch's scaled_dot_product_attention): the dynamo exporter turns it into plain
# ONNX ops that match torch to float rounding on the parity batches (bench/README.md).
ATTENTION = "sdpa"


def load_base_encoder(folder: Path) -> nn.Module:
    """The base model's encoder (no task head) from `folder`, in float32 and train mode."""
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    return AutoModel.from_pretrained(folder, config=config, local_files_only=True, use_safetensors=True,
                                     attn_implementation=ATTENTION, dtype=torch.float32)


def base_text_encoder(folder: Path, max_length: int) -> TextEncoder:
    """The base model's own tokenizer.json, cut at `max_length` tokens (special tokens included) and at most at
    the positions the model has."""
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    positions = getattr(config, "max_position_embeddings", max_length)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta"):
        positions -= 2  # their position ids start after the padding index
    tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tokenizer.no_truncation()  # what such files ship (often 128) is not the model's limit: positions are
    return TextEncoder(tokenizer, min(max_length, positions))


class EncoderClassifier(nn.Module):
    """Pretrained encoder, pooling over real tokens (mean, max or the first token), dropout, linear head."""

    # Rows per validation forward pass (core/limits.py ENCODER_EVAL_ROWS counts the same).
    eval_batch = 64

    def __init__(self, spec: ModelSpec, folder: Path, num_classes: int) -> None:
        super().__init__()
        self.encoder = load_base_encoder(folder)
        self.pooling = spec.pooling
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_classes)
        # BERT's own initialisation for new layers (std 0.02), so the head starts near uniform predictions.
        nn.init.normal_(self.head.weight, std=getattr(self.encoder.config, "initializer_range", 0.02))
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] for right-padded input_ids and attention_mask [B, T]."""
        return self.head(self.dropout(self.features(input_ids, attention_mask)))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled vectors [B, H] the head reads."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        return self._pool(states, attention_mask)

    def _pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return states[:, 0]
        valid = attention_mask.unsqueeze(-1).to(states.dtype)  # [B, T, 1]
        if self.pooling == "max":
            # Padding gets the dtype's lowest value so it never wins; an all-padding row pools to zeros.
            pooled = states.masked_fill(valid == 0, torch.finfo(states.dtype).min).amax(dim=1)
            return pooled * (valid.sum(dim=1) > 0).to(states.dtype)
        return (states * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters from the input up: embeddings, each transformer layer, then everything else (pooler,
        head). Layer-wise learning-rate decay gives each group lr x decay^(groups above it)."""
        named = dict(self.named_parameters())
        layers = _encoder_layers(self.encoder)
        groups: list[list[nn.Parameter]] = [[p for n, p in named.items() if ".embeddings." in f".{n}"]]
        seen = {id(p) for p in groups[0]}
        for layer in layers:
            groups.append([p for p in layer.parameters() if id(p) not in seen])
            seen.update(id(p) for p in groups[-1])
        groups.append([p for p in named.values() if id(p) not in seen])
        return [g for g in groups if g]


def _encoder_layers(encoder: nn.Module) -> list[nn.Module]:
    """The transformer blocks in order: the longest nn.ModuleList in the model (encoder.layer for BERT,
    transformer.layer for DistilBERT, ...)."""
    lists = [m for m in encoder.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []
