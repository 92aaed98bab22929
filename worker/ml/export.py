"""Export a trained classifier to one self-contained model.onnx and prove onnxruntime agrees with torch."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.export import Dim

from core.ml.tokenizer import PAD_ID, TextEncoder

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
# Example sequence length: >= 2 so the token axis is not specialised to 0/1 by torch.export, and past any
# convolution width a spec allows (<= 16) so no kernel sees a shorter example than at serving time.
EXAMPLE_TOKENS = 17
# Sizes the parity check covers; none equals the export example's (2, 17), so a shape baked in would show.
PARITY_BATCHES = (1, 3, 17)
PARITY_LONG = (5, 61)  # synthetic batch: 5 rows of random ids, ragged lengths up to 61 tokens


class ParityError(RuntimeError):
    """onnxruntime's output disagrees with torch's beyond tolerance."""


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Mute the dynamo exporter's known, harmless warnings and log lines for the duration of one export."""
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    # "torchvision is not installed. Skipping torchvision::nms" and similar registry notes on every export.
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch 2.13's own deepcopy of a pytree LeafSpec trips its deprecation shim; the warning is
            # attributed to copyreg, so pyproject's torch.* filters miss it.
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            # Both inputs share the batch/tokens Dims, which the exporter reports once per shared axis.
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
            # nn.GRU re-assigns its cached `_flat_weights` list while being traced; they are its own parameters,
            # already registered, so nothing is lost (the GRU exports to one ONNX GRU node per direction).
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights.* were assigned during "
                                    r"export", category=UserWarning)
            # torch's own tracing of the GRU touches a deprecated check and a non-leaf .grad; neither is our code.
            warnings.filterwarnings("ignore", message=r"_check_is_size will be removed", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"The \.grad attribute of a Tensor that is not a leaf",
                                    category=UserWarning)
            yield
    finally:
        onnx_log.setLevel(level)


def _clear_rnn_dispatch_caches() -> None:
    """Forget the kernels torch cached for aten.gru / aten.lstm during an earlier export.

    torch 2.13's exporter swaps in a while_loop RNN decomposition (so the token axis can stay dynamic) by
    assigning `py_kernels` directly, which skips the op's dispatch-cache invalidation; a kernel cached by an
    earlier export then wins. Seen here: the second BiGRU export in a process came out with the token axis
    fixed at the example's 17 (check_parity would fail it). Clearing the cache costs one re-lookup.
    """
    for op in (torch.ops.aten.gru.input, torch.ops.aten.lstm.input):
        cache = getattr(op, "_dispatch_cache", None)
        if isinstance(cache, dict):
            cache.clear()


def export_onnx(model: nn.Module, path: Path, *, vocab_size: int) -> None:
    """Write `model` to `path` as one ONNX file with dynamic batch and token axes, atomically."""
    path = Path(path)
    model.eval()
    # A model may export an equivalent form that serves faster (TextCNN merges its convolutions);
    # check_parity then compares the file against the model as trained.
    if hasattr(model, "for_export"):
        model = model.for_export()
    device = next(model.parameters()).device
    # Example batch of 2 real (non-pad) ids: a batch of 1 would let torch.export specialise the batch axis.
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, max(vocab_size, 3), (2, EXAMPLE_TOKENS), generator=generator).to(device)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, EXAMPLE_TOKENS // 2 :] = 0  # one ragged row so masking is traced with real values
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD_ID)
    batch, tokens = Dim("batch"), Dim("tokens")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _clear_rnn_dispatch_caches()
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                model,
                (input_ids, attention_mask),
                str(tmp),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"input_ids": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens}},
                dynamo=True,
                external_data=False,  # one file: a lone model.onnx without its .data sibling cannot load
                verbose=False,
            )
        os.replace(tmp, path)  # readers see the old file or the whole new one, never a partial write
    finally:
        tmp.unlink(missing_ok=True)


def _parity_cases(encoder: TextEncoder, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Input batches of several sizes and widths: real texts (cycled if few) plus a long synthetic one."""
    texts = list(texts) or ["a"]
    cases = [encoder.encode([texts[i % len(texts)] for i in range(n)]) for n in PARITY_BATCHES]
    cases.append(encoder.encode([""]))  # all padding: the models must not divide by zero
    rng = np.random.default_rng(0)
    rows, width = PARITY_LONG
    width = min(width, encoder.max_length)
    lengths = rng.integers(1, width + 1, size=rows)
    lengths[0] = width  # the longest row sets the batch width
    ids = rng.integers(2, max(encoder.vocab_size, 3), size=(rows, width), dtype=np.int64)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    cases.append((np.where(mask == 1, ids, PAD_ID), mask))
    return cases


def check_parity(
    model: nn.Module, path: Path, encoder: TextEncoder, texts: Sequence[str], *, atol: float = 1e-4,
    rtol: float = 1e-5,
) -> dict:
    """Compare torch and onnxruntime (CPU) logits over several batch shapes; raise ParityError on mismatch.

    The tolerance is atol + rtol x the largest |logit| torch gave: float32 rounding grows with the numbers'
    size, so a fixed bound would fail any correct export of a model whose logits are large. Every row's argmax
    must agree as well.
    """
    model.eval()
    device = next(model.parameters()).device
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    max_diff, scale, agree, total = 0.0, 0.0, 0, 0
    cases = _parity_cases(encoder, texts)
    for input_ids, attention_mask in cases:
        with torch.no_grad():
            expected = model(torch.from_numpy(input_ids).to(device), torch.from_numpy(attention_mask).to(device))
        expected = expected.float().cpu().numpy()
        (got,) = session.run([OUTPUT_NAME], {"input_ids": input_ids, "attention_mask": attention_mask})
        if got.shape != expected.shape:
            raise ParityError(f"onnx logits shape {got.shape} != torch {expected.shape}")
        max_diff = max(max_diff, float(np.abs(got - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
        agree += int((got.argmax(axis=1) == expected.argmax(axis=1)).sum())
        total += len(expected)
    tolerance = atol + rtol * scale
    result = {"max_abs_diff": max_diff, "tolerance": tolerance, "argmax_agreement": agree / total,
              "cases": len(cases)}
    if agree != total or not max_diff <= tolerance:  # `not <=` also catches NaN
        raise ParityError(f"onnxruntime disagrees with torch: {result} (tolerance {atol:g} + {rtol:g} x the largest "
                          f"|logit|, {scale:.4g})")
    return result
