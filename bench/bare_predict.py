"""The floor under our predict: a bare WSGI app that does only what a predict cannot skip, under the same server
as the API (Granian, same workers and blocking threads).

It reads the JSON body, tokenises and scores the texts with the API's own OnnxPredictor (same model folder, same
onnxruntime threads per worker), and writes `predict`'s answer as JSON. No framework, routing, validation,
authentication, metrics, logging, batching or model registry: bench/serving.py measures it beside our predict, so
the table shows how much of a predict's cost is the service around the model and how much the server, the
tokenizer and onnxruntime take on this machine whatever the service does.

    TEXTCLF_BARE_MODEL_DIR=DIR python -m granian --interface wsgi --factory bench.bare_predict:create_app ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from app.serving import onnx_threads
from core.config import get_settings
from core.ml.predictor import OnnxPredictor


def create_app():
    model_dir = Path(os.environ["TEXTCLF_BARE_MODEL_DIR"])
    predictor = OnnxPredictor(model_dir, intra_op_threads=onnx_threads(get_settings()))  # as the API's workers
    predictor.warm_up()

    def app(environ, start_response):
        if environ["REQUEST_METHOD"] != "POST":  # the readiness probe
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"ok"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        texts = json.loads(environ["wsgi.input"].read(length))["texts"]
        body = json.dumps({"predictions": predictor.predict(texts)}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app
