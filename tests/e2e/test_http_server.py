"""The HTTP server under hostile clients: stalled and slow sockets take no worker away, and what the server
refuses comes back with the right status, in the JSON error shape wherever the app sees the request."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from tests.helpers import Processes, start_serve, upload_tiny, wait_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """`textclf serve` (2 API workers) with one trained model."""
    tmp_path = tmp_path_factory.mktemp("http")
    procs = Processes(tmp_path)
    try:
        base, _, _ = start_serve(tmp_path, procs)
        job = requests.post(f"{base}/v1/jobs", json={"dataset_id": upload_tiny(base), "epochs": 1},
                            timeout=10).json()
        model_id = wait_job(base, job["id"], timeout=240)["model_id"]
        assert model_id, job
        yield base, model_id
    finally:
        procs.stop()


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def _raw(base: str, payload: bytes, wait: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; (status, headers, body) of the reply, read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", _port(base)), timeout=wait) as sock:
        sock.sendall(payload)
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":", 1)[1])
    return 1 << 30


def _stall(base: str, payloads: list[bytes]) -> list[socket.socket]:
    socks = []
    for payload in payloads:
        sock = socket.create_connection(("127.0.0.1", _port(base)))
        sock.sendall(payload)
        socks.append(sock)
    return socks


def test_stalled_and_slow_clients_take_no_worker_away(service):
    base, model_id = service
    stalled = _stall(base, [
        *[b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "] * 4,  # headers that never end
        # a chunked body that never ends, and a body shorter than its Content-Length, both on views that read
        *[f"POST /v1/models/{model_id}/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"tex\r\n".encode()] * 2,
        *[b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 100000\r\n\r\n"
          b"text,"] * 2,
    ])
    stop = threading.Event()

    def trickle() -> None:  # one byte at a time, never done
        with socket.create_connection(("127.0.0.1", _port(base))) as sock:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Trickle: " + b"a" * 10_000:
                if stop.wait(0.1):
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:  # the server's header timeout closed it: that is allowed
                    return

    tricklers = [threading.Thread(target=trickle, daemon=True) for _ in range(4)]
    for thread in tricklers:
        thread.start()
    try:
        time.sleep(0.5)  # let the server take them all in
        for _ in range(3):
            # 1 s is hundreds of times what these take; a server whose workers those sockets hold never answers.
            assert requests.get(f"{base}/healthz", timeout=1).status_code == 200
            reply = requests.post(f"{base}/v1/models/{model_id}/predict", json={"texts": ["the striker scored"]},
                                  timeout=1)
            assert reply.status_code == 200, reply.text
    finally:
        stop.set()
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize("payload, status, code", [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_240 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"GET /v1/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    # a chunk size that is not hex: the body is unreadable, so it is no JSON document
    (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"zz\r\n{\"texts\": [\"a\"]}\r\n0\r\n\r\n", 400, "invalid_json"),
], ids=["header_10kb", "path_20kb", "bad_chunk_size"])
def test_what_the_app_refuses_is_json(service, payload, status, code):
    base, _ = service
    got, headers, body = _raw(base, payload)
    assert got == status and headers["content-type"] == "application/json", (got, headers, body[:300])
    assert json.loads(body)["error"]["code"] == code


@pytest.mark.parametrize("payload, status", [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad\x01: v\r\n\r\n", 400),  # not a header name
    # Past Granian's 400 KiB buffer it answers itself; whether the whole header fits in one read decides which
    # of the two answers (seen both ways under load), and both are a 431.
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 500_000 + b"\r\n\r\n", 431),
], ids=["bad_header_bytes", "header_500kb"])
def test_what_the_server_refuses_before_the_app_has_the_status_and_no_html(service, payload, status):
    base, _ = service
    got, headers, body = _raw(base, payload)
    assert got == status, (got, headers, body[:300])
    if body:  # the app saw it: our JSON shape
        assert headers["content-type"] == "application/json" and json.loads(body)["error"]["code"], body[:300]
    else:  # Granian's own reply: the status, an empty body, the connection closed
        assert headers.get("connection") == "close", headers


def test_content_length_and_transfer_encoding_together_is_read_as_chunked_and_closed(service):
    # RFC 9112 section 6.3: Transfer-Encoding wins and the connection is closed after the reply (no smuggling).
    base, model_id = service
    body = b'{"texts": ["the striker scored"]}'
    got, headers, reply = _raw(base, f"POST /v1/models/{model_id}/predict HTTP/1.1\r\nHost: x\r\n"
                               f"Content-Type: application/json\r\nContent-Length: 3\r\n"
                               f"Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n".encode()
                               + body + b"\r\n0\r\n\r\n")
    assert got == 200 and headers.get("connection") == "close", (got, headers, reply[:300])
    assert json.loads(reply)["model_id"] == model_id
