"""A model as a self-contained zip: the ONNX graph, the tokenizer, the labels and a model card, enough to
classify text with onnxruntime and HF `tokenizers` alone (see README.md, "Model bundle")."""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any

from core.db.tables import Model
from core.ml.tokenizer import TextEncoder

# Bundles are built in memory up to this size, then in a temporary file.
_SPOOL_BYTES = 32 * 1024 * 1024

USAGE = '''\
import json, zipfile
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer

bundle = zipfile.ZipFile("{file}")
card = json.loads(bundle.read("model_card.json"))
tokenizer = Tokenizer.from_str(bundle.read("tokenizer.json").decode())
session = ort.InferenceSession(bundle.read("model.onnx"), providers=["CPUExecutionProvider"])

texts = ["How far is it from Denver to Aspen ?", "Who wrote Hamlet ?"]
encoded = tokenizer.encode_batch(texts, add_special_tokens=card["add_special_tokens"])
rows = [e.ids[: card["max_tokens"]] for e in encoded]
width = max(card["min_tokens"], *map(len, rows))
ids = np.array([r + [card["pad_id"]] * (width - len(r)) for r in rows], dtype=np.int64)
mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=np.int64)
(logits,) = session.run(["logits"], {{"input_ids": ids, "attention_mask": mask}})
print([card["labels"][i] for i in logits.argmax(axis=1)])
'''


def safe_name(name: str) -> str:
    """A model name reduced to characters that are safe in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


def model_card(model: Model, encoder: TextEncoder) -> dict[str, Any]:
    """What the model is, what it was trained on, how well it did, and how to feed it (`encoder`: the model's
    tokenizer.json as the service reads it)."""
    spec = model.spec
    return {
        "id": str(model.id), "name": model.name, "version": model.version,
        "created_at": model.created_at.isoformat(), "labels": model.labels,
        "dataset_id": str(model.dataset_id) if model.dataset_id else None,
        "dataset_sha256": model.metrics.get("dataset_sha256"),
        "spec": spec, "metrics": model.metrics, "abstain_threshold": model.abstain_threshold,
        # The graph's contract, so a client can build its inputs without this service's code.
        "inputs": {"input_ids": "int64 [batch, tokens]", "attention_mask": "int64 [batch, tokens], 1 = token"},
        "outputs": {"logits": "float32 [batch, labels]; softmax gives the scores the API returns"},
        "pad_id": encoder.pad_id, "min_tokens": encoder.min_length, "max_tokens": encoder.max_length,
        # A pretrained encoder's tokenizer.json adds its [CLS]/[SEP] itself (and truncates keeping them).
        "add_special_tokens": encoder.special_tokens,
        "tokenizer": f"tokenizer.json (HF tokenizers; encode with add_special_tokens={encoder.special_tokens})",
    }


def _readme(card: dict[str, Any], file_name: str) -> str:
    metrics = card["metrics"]
    rows = "\n".join(f"| {key} | {metrics[key]:.4f} |" for key in
                     ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1")
                     if isinstance(metrics.get(key), (int, float)))
    return (f"# {card['name']} v{card['version']}\n\n"
            f"A {card['spec']['model']['name']} text classifier with {len(card['labels'])} labels: "
            f"{', '.join(card['labels'][:20])}{' ...' if len(card['labels']) > 20 else ''}.\n\n"
            f"Trained on dataset {card['dataset_id']} (sha256 {card['dataset_sha256']}); the full spec and "
            f"metrics are in model_card.json.\n\n| metric | value |\n|---|---|\n{rows}\n\n"
            f"## Use it with onnxruntime and tokenizers only\n\n```python\n{USAGE.format(file=file_name)}```\n")


def write_bundle(model: Model, folder: Path) -> IO[bytes]:
    """The zip of `folder`'s model, rewound and ready to stream."""
    card = model_card(model, TextEncoder.from_file(folder / "tokenizer.json", model.spec["tokenizer"]["max_length"]))
    out = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in ("model.onnx", "tokenizer.json", "labels.json"):
            archive.write(folder / name, name)
        archive.writestr("model_card.json", json.dumps(card, indent=2, ensure_ascii=False))
        archive.writestr("README.md", _readme(card, f"{safe_name(model.name)}-v{model.version}.zip"))
    out.seek(0)
    return out
