"""BentoML's row of bench/serving.py: our exported model.onnx behind a BentoML 1.4 service, fed the token ids our
tokenizer made (as the MLflow row is), so the server does only HTTP, JSON and the onnxruntime call.

It runs in the bench's own BentoML environment (bench/results/envs/bentoml), never in this project's:

    TEXTCLF_BENCH_ONNX=/path/to/model.onnx bentoml serve bench.bentoml_service:OnnxClassifier --port 3000

Two endpoints on one server, so both rows use the same processes and sessions: POST /predict runs each request
alone (batching off) and POST /predict_batched goes through BentoML's adaptive batching. The body of both is
{"tokens": [[input_ids, attention_mask]]}, one int array [B, 2, T]: a batchable API takes a single argument, and
BentoML merges requests by joining that argument's arrays along axis 0 (so merged requests need one length T,
which the bench's requests, one text each, all have).
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import onnxruntime as ort

MODEL_ENV = "TEXTCLF_BENCH_ONNX"
WORKERS = 2  # as our API's 2 Granian workers and MLflow's `-w 2`


def make_session(path: str) -> ort.InferenceSession:
    """An onnxruntime session set up as our API sets its own (core/ml/predictor.py, app/serving.py), so the row
    measures BentoML's serving rather than a different threading of the same graph."""
    options = ort.SessionOptions()
    # The cores shared between the worker processes; threads fighting over them slow every worker.
    options.intra_op_num_threads = max(1, len(os.sched_getaffinity(0)) // WORKERS)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


@bentoml.service(workers=WORKERS)
class OnnxClassifier:
    """model.onnx (path in $TEXTCLF_BENCH_ONNX): token ids and mask in, logits out."""

    def __init__(self) -> None:
        self.session = make_session(os.environ[MODEL_ENV])

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """Logits [B, C] for tokens [B, 2, T] (ids, then attention mask)."""
        tokens = tokens.astype(np.int64, copy=False)
        feeds = {"input_ids": np.ascontiguousarray(tokens[:, 0]),
                 "attention_mask": np.ascontiguousarray(tokens[:, 1])}
        (out,) = self.session.run(["logits"], feeds)
        return out

    @bentoml.api
    def predict(self, tokens: np.ndarray) -> np.ndarray:
        """One request, one onnxruntime call."""
        return self.logits(tokens)

    # Adaptive batching: BentoML's dispatcher in each worker waits as long as its model of the call's cost says
    # pays, up to 256 rows (our PREDICT_MAX_BATCH_TEXTS). max_latency_ms is a deadline, not a wait: a request the
    # dispatcher expects to miss it gets a 503, so it sits well above any p99 here, yet low enough that the
    # dispatcher's first cost guesses (a fraction of it) keep its warm-up short.
    @bentoml.api(batchable=True, max_batch_size=256, max_latency_ms=1000)
    def predict_batched(self, tokens: np.ndarray) -> np.ndarray:
        """Requests merged by BentoML into one onnxruntime call."""
        return self.logits(tokens)
