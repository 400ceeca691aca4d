"""The explorer's API (attnlrp.serve, docs/serve.md "API"): every endpoint against an independent computation
with the library, bad input and every limit, the token, the Host check, no CORS, the model's queue under
concurrent requests, the generation stream, steering, the atlas, images, exports, and `attnlrp serve` itself.

Breadth on a tiny seeded Llama with the word-level tokenizer; two tests on the embedded SmolLM2. Nothing here
waits on wall time: threads and the server synchronise on events, semaphores, pipes and files.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

import attnlrp  # noqa: E402
from attnlrp.concepts import Atlas, build_atlas  # noqa: E402
from attnlrp.concepts.render import concept_dict  # noqa: E402
from attnlrp.explain import Explainer  # noqa: E402
from attnlrp.generation import explain_generation  # noqa: E402
from attnlrp.latent.steering import steer  # noqa: E402
from attnlrp.method_registry import method_names  # noqa: E402
from attnlrp.serve import Limits, ServeSession, allowed_hosts, create_app  # noqa: E402
from tiny import WORDS, tiny_llama, word_tokenizer  # noqa: E402

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"
PROMPT = "the capital of france is"
#: an upper bound for waiting on a server or thread that should answer at once; it only keeps a broken run from
#: hanging, and a run that needs it fails
STUCK = 120


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    return tiny_llama(torch.float64)


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.fixture(scope="module")
def session(model, tok):
    return ServeSession.create(model, tok, source="tiny-llama")


def client_for(session: ServeSession, **kwargs: Any) -> TestClient:
    app = create_app(session, token=TOKEN, allowed_hosts=allowed_hosts(PORT), **kwargs)
    return TestClient(app, base_url=BASE)


@pytest.fixture(scope="module")
def client(session) -> Iterator[TestClient]:
    with client_for(session) as c:
        yield c


def post(client: TestClient, path: str, body: Any, headers: dict[str, str] = AUTH) -> Any:
    return client.post(path, json=body, headers=headers)


def assert_error(response: Any, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, message
    return message


def _close(a: Any, b: Any, path: str = "$") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: {sorted(a)} != {sorted(b)}"
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# --------------------------------------------------------------------------------------------- endpoints

def test_info(client, session):
    info = client.get("/api/info", headers=AUTH).json()
    assert info["model"] == "tiny-llama" and info["kind"] == "causal-lm"
    assert info["methods"] == list(method_names()) and info["default_method"] == "attnlrp"
    assert info["neuron_methods"] == list(method_names(has_unit_relevance=True))
    assert (info["layers"], info["heads"], info["neurons"]) == (2, 4, 64)
    # the tokenizer's 64 tokens are the context: the default prompt limit is min(context, 2048)
    assert info["limits"] == {"prompt_tokens": 64, "new_tokens": 128, "body_bytes": 65536,
                              "upload_bytes": 2 * 1024 * 1024, "steer_neurons": 64, "queue": 8}
    assert info["atlas"] is None and "--atlas" in info["atlas_hint"] and "concepts build" in info["atlas_hint"]
    assert info["export"] is False and info["image"] is None
    assert info["version"] == attnlrp.__version__


def test_tokenize(client, tok):
    answer = post(client, "/api/tokenize", {"prompt": PROMPT}).json()
    assert answer["tokens"] == ["[BOS]", "the", " capital", " of", " france", " is"]
    assert answer["token_ids"] == [tok.bos_token_id] + tok(PROMPT, add_special_tokens=False).input_ids
    assert answer["special"] == [True] + [False] * 5
    no_bos = post(client, "/api/tokenize", {"prompt": PROMPT, "add_bos": False}).json()
    assert no_bos["tokens"] == answer["tokens"][1:]


@pytest.mark.parametrize("request_fields, call", [
    ({}, {}),
    ({"method": "cp-lrp", "target": "paris"}, {"method": "cp-lrp", "target": "paris"}),
    ({"target": "paris", "contrast": "rome"}, {"target": "paris", "contrast": "rome"}),
    ({"position": 2}, {"position": 2}),
    ({"method": "gradient", "add_bos": False}, {"method": "gradient", "add_bos": False}),
])
def test_explain_equals_the_library(client, model, tok, request_fields, call):
    method = call.pop("method", "attnlrp")
    expected = Explainer(model, tok, method=method, model_name="tiny-llama").explain(PROMPT, **call).to_dict()
    answer = post(client, "/api/explain", {"prompt": PROMPT, **request_fields})
    assert answer.status_code == 200, answer.text
    _close(answer.json(), expected)


def test_explain_token_ids_are_used_as_given(client, model, tok):
    ids = [tok.bos_token_id] + tok(PROMPT + " paris", add_special_tokens=False).input_ids
    answer = post(client, "/api/explain", {"token_ids": ids, "position": 3}).json()
    assert answer["token_ids"] == ids and answer["target"]["position"] == 3
    _close(answer, Explainer(model, tok, model_name="tiny-llama").explain(ids, position=3).to_dict())


def test_latents(client, model, tok):
    explanation = Explainer(model, tok, model_name="tiny-llama").explain(PROMPT, latents=True)
    relevance = explanation.latents
    answer = post(client, "/api/latents", {"prompt": PROMPT, "top_k": 5}).json()
    expected = explanation.to_dict()
    del expected["latents"]
    _close(answer["explanation"], expected)
    latents = answer["latents"]
    top = relevance.top_heads(1)[0]
    _close({k: latents[k] for k in ("layers", "residual", "top_neurons", "top_heads")},
           {k: v for k, v in relevance.to_dict(top_k=5).items() if k in ("layers", "residual", "top_neurons",
                                                                          "top_heads")})
    assert len(latents["top_neurons"]) == 5
    assert np.allclose(latents["heads"], relevance.head_totals().numpy(), rtol=1e-12)
    assert latents["head"] == [top.layer, top.head]
    assert np.allclose(latents["head_tokens"], relevance.head(top.layer, top.head).numpy())
    chosen = post(client, "/api/latents", {"prompt": PROMPT, "head": [0, 3]}).json()["latents"]
    assert chosen["head"] == [0, 3] and np.allclose(chosen["head_tokens"], relevance.head(0, 3).numpy())
    assert_error(post(client, "/api/latents", {"prompt": PROMPT, "head": [0, 9]}), 400, "head 9")
    assert_error(post(client, "/api/latents", {"prompt": PROMPT, "head": [0]}), 400, "[layer, head]")
    assert_error(post(client, "/api/latents", {"prompt": PROMPT, "method": "gradient"}), 400, "neuron and head")


def test_neurons(client, model, tok):
    relevance = Explainer(model, tok).explain(PROMPT, latents=True).latents
    answer = post(client, "/api/neurons", {"prompt": PROMPT, "top": 4, "layer": 1}).json()
    _close(answer, [s.to_dict() for s in relevance.top_neurons(4, layer=1)])
    assert [n["layer"] for n in answer] == [1] * 4


def test_steer_recomputes_the_heatmap_on_the_steered_model(client, model, tok):
    edits = {"off": ["0:5"], "scale": {"1:7": 4.0}, "set": {"1:11": 3.0}}
    answer = post(client, "/api/steer", {"prompt": PROMPT, **edits, "max_new_tokens": 3})
    assert answer.status_code == 200, answer.text
    answer = answer.json()
    comparison = answer["comparison"]
    assert [(n["layer"], n["neuron"], n["mode"]) for n in comparison["neurons"]] == [
        (0, 5, "off"), (1, 7, "scale"), (1, 11, "set")]
    reference = comparison["reference"]["token_id"]
    explainer = Explainer(model, tok, model_name="tiny-llama")
    with steer(model, off=["0:5"], scale={"1:7": 4.0}, set={"1:11": 3.0}):
        steered = explainer.explain(PROMPT, target=reference).to_dict()
        steered_logits = model(**tok(PROMPT, return_tensors="pt")).logits
    plain = explainer.explain(PROMPT, target=reference).to_dict()
    _close(answer["explanations"]["before"], plain)
    _close(answer["explanations"]["after"], steered)
    after, before = answer["explanations"]["after"], answer["explanations"]["before"]
    assert after["target"]["token_id"] == before["target"]["token_id"] == reference
    assert abs(after["value"] - before["value"]) > 1e-3
    assert not np.allclose(after["relevance"], before["relevance"], atol=1e-6)
    assert comparison["after"]["logit"] == pytest.approx(after["value"], rel=1e-9)
    assert comparison["before"]["logit"] == pytest.approx(before["value"], rel=1e-9)
    assert len(comparison["after"]["generated_ids"]) == 3
    assert steered_logits.shape[-1] == len(tok)  # the steering above really ran the model
    # with a given target, both explanations explain that token
    targeted = post(client, "/api/steer", {"prompt": PROMPT, "off": ["0:5"], "target": "rome",
                                           "max_new_tokens": 0}).json()["explanations"]
    assert targeted["before"]["target"]["token"] == targeted["after"]["target"]["token"] == "rome"


def test_steered_explain_and_no_steering_left_behind(client, model, tok):
    steered = post(client, "/api/explain", {"prompt": PROMPT, "target": "paris", "steer": {"set": {"0:1": 5.0}}})
    with steer(model, set={(0, 1): 5.0}):
        expected = Explainer(model, tok, model_name="tiny-llama").explain(PROMPT, target="paris").to_dict()
    _close(steered.json(), expected)
    plain = post(client, "/api/explain", {"prompt": PROMPT, "target": "paris"}).json()
    assert plain["value"] != pytest.approx(steered.json()["value"], abs=1e-6)
    hooks = sum(len(m._forward_pre_hooks) for m in model.modules())
    post(client, "/api/explain", {"prompt": PROMPT, "steer": {"off": ["0:1", "1:2"]}})
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == hooks  # the steering hooks are gone
    _close(plain, Explainer(model, tok, model_name="tiny-llama").explain(PROMPT, target="paris").to_dict())


# ------------------------------------------------------------------------------------------ generation

def read_events(response: Any) -> Iterator[tuple[str, Any]]:
    """The SSE events of a streamed response, as they arrive."""
    name, data = None, []
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data.append(line[len("data: "):])
        elif line == "" and name is not None:
            yield name, json.loads("\n".join(data))
            name, data = None, []


def test_generate_streams_tokens_then_the_relevance(client, model, tok):
    n = 4
    with client.stream("POST", "/api/generate", json={"prompt": PROMPT, "max_new_tokens": n}, headers=AUTH) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = list(read_events(r))
    names = [name for name, _ in events]
    assert names == ["token"] * n + ["relevance", "done"]
    expected = explain_generation(model, tok, PROMPT, max_new_tokens=n, model_name="tiny-llama").to_dict()
    relevance = events[n][1]
    _close(relevance, expected)
    tokens = [data for _, data in events[:n]]
    assert [t["index"] for t in tokens] == list(range(n))
    assert [t["id"] for t in tokens] == expected["token_ids"][expected["prompt_length"]:]
    assert [t["text"] for t in tokens] == expected["generated"]


def test_generate_sends_each_token_before_the_next_is_generated(session, model):
    """The second generation step waits until the client holds the first token: a server that buffered the
    stream could not deliver it, and the step would find no token delivered."""
    delivered = threading.Event()
    seen: list[bool] = []
    calls = [0]

    def hold_second_step(module: Any, args: Any, kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:
            seen.append(delivered.wait(STUCK))

    handle = model.register_forward_pre_hook(hold_second_step, with_kwargs=True)
    try:
        with client_for(session) as c, c.stream("POST", "/api/generate", headers=AUTH,
                                                json={"prompt": PROMPT, "max_new_tokens": 3}) as r:
            names = []
            for name, _ in read_events(r):
                names.append(name)
                if name == "token":
                    delivered.set()
    finally:
        handle.remove()
    assert seen == [True]
    assert names == ["token"] * 3 + ["relevance", "done"]


def test_generate_with_steering_and_errors(client, model, tok):
    with client.stream("POST", "/api/generate", headers=AUTH, json={
            "prompt": PROMPT, "max_new_tokens": 3, "steer": {"set": {"1:3": 6.0}}}) as r:
        events = dict(read_events(r))
    with steer(model, set={(1, 3): 6.0}):
        expected = explain_generation(model, tok, PROMPT, max_new_tokens=3, model_name="tiny-llama").to_dict()
    _close(events["relevance"], expected)
    # refused before the stream starts: an ordinary JSON error
    assert_error(post(client, "/api/generate", {"prompt": PROMPT, "max_new_tokens": 0}), 400, "at least 1")
    assert_error(post(client, "/api/generate", {"prompt": PROMPT, "max_new_tokens": 60}), 400, "context")


# ----------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("path, body, words", [
    ("/api/explain", {}, ["prompt is missing"]),
    ("/api/explain", {"prompt": 3}, ["prompt must be a string"]),
    ("/api/explain", {"prompt": PROMPT, "token_ids": [1, 2]}, ["not both"]),
    ("/api/explain", {"token_ids": [1, "2"]}, ["list of integers"]),
    ("/api/explain", {"token_ids": [1, 9999]}, ["9999", "outside the vocabulary"]),
    ("/api/explain", {"prompt": "   "}, ["empty"]),
    ("/api/explain", {"prompt": PROMPT, "method": "lime"}, ["unknown method 'lime'", "attnlrp"]),
    ("/api/explain", {"prompt": PROMPT, "target": "paris france"}, ["single token"]),
    ("/api/explain", {"prompt": PROMPT, "target": 1.5}, ["token string or a token id"]),
    ("/api/explain", {"prompt": PROMPT, "target": 10_000}, ["outside the vocabulary"]),
    ("/api/explain", {"prompt": PROMPT, "position": "2"}, ["position must be an integer"]),
    ("/api/explain", {"prompt": PROMPT, "add_bos": "yes"}, ["add_bos"]),
    ("/api/explain", {"prompt": PROMPT, "promt": "x"}, ["unknown field 'promt'", "takes prompt"]),
    ("/api/explain", [PROMPT], ["JSON object"]),
    ("/api/explain", {"prompt": PROMPT, "steer": {"off": ["3-17"]}}, ["LAYER:NEURON"]),
    ("/api/explain", {"prompt": PROMPT, "steer": {"off": ["7:1"]}}, ["layer 7 does not exist"]),
    ("/api/explain", {"prompt": PROMPT, "steer": {"of": ["0:1"]}}, ["unknown field 'of'"]),
    ("/api/steer", {"prompt": PROMPT}, ["no neuron given"]),
    ("/api/steer", {"prompt": PROMPT, "scale": {"0:1": "big"}}, ["LAYER:NEURON"]),
    ("/api/steer", {"prompt": PROMPT, "off": ["0:1"], "set": {"0:1": 1}}, ["given twice"]),
    ("/api/steer", {"prompt": PROMPT, "off": ["0:99"]}, ["neuron 99 does not exist"]),
    ("/api/neurons", {"prompt": PROMPT, "top": 0}, ["top must be at least 1"]),
    ("/api/neurons", {"prompt": PROMPT, "layer": 5}, ["layer 5 does not exist"]),
    ("/api/tokenize", {"text": PROMPT}, ["unknown field 'text'"]),
    ("/api/explain-image", {"image": "x"}, ["language model"]),
    ("/api/export", {"kind": "html", "view": {}}, ["--export-dir"]),
])
def test_bad_input_says_what_to_do(client, path, body, words):
    status = 404 if path == "/api/export" else 400
    assert_error(post(client, path, body), status, *words)


def test_bodies_that_are_not_json(client):
    assert_error(client.post("/api/explain", content=b"{not json", headers=AUTH), 400, "not valid JSON")
    assert_error(client.post("/api/explain", content=b"", headers=AUTH), 400, "empty")
    assert_error(client.get("/api/explain", headers=AUTH), 405, "GET is not allowed")
    assert_error(client.get("/api/nothing", headers=AUTH), 404, "/api/nothing")


def test_a_failing_model_is_a_500_with_a_message(session, model):
    def broken(module: Any, args: Any) -> None:
        raise RuntimeError("weights on fire\nsecond line")

    handle = model.model.layers[1].register_forward_pre_hook(broken)
    try:
        with client_for(session) as c:
            message = assert_error(post(c, "/api/explain", {"prompt": PROMPT}), 500, "RuntimeError: weights on fire")
            # once the stream has started, a failure is its last event
            with c.stream("POST", "/api/generate", json={"prompt": PROMPT, "max_new_tokens": 2}, headers=AUTH) as r:
                assert r.status_code == 200
                events = list(read_events(r))
            assert [name for name, _ in events] == ["error"]
            assert "weights on fire" in events[0][1]["error"]
    finally:
        handle.remove()
    assert "second line" not in message


# ---------------------------------------------------------------------------------------------- limits

def test_prompt_token_limit(session):
    with client_for(session, limits=Limits(prompt_tokens=4)) as c:
        assert c.get("/api/info", headers=AUTH).json()["limits"]["prompt_tokens"] == 4
        assert post(c, "/api/explain", {"prompt": "the capital of"}).status_code == 200  # BOS + 3 = 4 tokens
        for path in ("/api/explain", "/api/latents", "/api/neurons", "/api/generate"):
            assert_error(post(c, path, {"prompt": PROMPT}), 400, "6 tokens", "at most 4", "--max-prompt-tokens")
        assert_error(post(c, "/api/steer", {"prompt": PROMPT, "off": ["0:1"]}), 400, "--max-prompt-tokens")
        assert_error(post(c, "/api/explain", {"token_ids": [2, 6, 10, 8, 13]}), 400, "5 tokens")


def test_new_token_limit(session):
    with client_for(session, limits=Limits(new_tokens=2)) as c:
        assert_error(post(c, "/api/generate", {"prompt": PROMPT, "max_new_tokens": 3}), 400, "at most 2",
                     "--max-new-tokens")
        assert_error(post(c, "/api/steer", {"prompt": PROMPT, "off": ["0:1"], "max_new_tokens": 3}), 400,
                     "--max-new-tokens")
        assert_error(post(c, "/api/steer", {"prompt": PROMPT, "off": ["0:1"]}), 400, "20", "at most 2")
        with c.stream("POST", "/api/generate", json={"prompt": PROMPT, "max_new_tokens": 2}, headers=AUTH) as r:
            assert [name for name, _ in read_events(r)] == ["token", "token", "relevance", "done"]


def test_steer_neuron_limit(session):
    with client_for(session, limits=Limits(steer_neurons=2)) as c:
        assert post(c, "/api/steer", {"prompt": PROMPT, "off": ["0:1", "0:2"], "max_new_tokens": 0}).status_code == 200
        three = {"off": ["0:1"], "scale": {"0:2": 2}, "set": {"0:3": 1}}
        assert_error(post(c, "/api/steer", {"prompt": PROMPT, **three}), 400, "3 neurons", "at most 2",
                     "--max-steer-neurons")
        assert_error(post(c, "/api/explain", {"prompt": PROMPT, "steer": three}), 400, "--max-steer-neurons")


def test_body_limit(client):
    over = json.dumps({"prompt": "the " * 17_000}).encode()  # 68 KB > 64 KiB
    assert len(over) > 65536
    assert_error(client.post("/api/explain", content=over, headers={**AUTH, "content-type": "application/json"}),
                 413, "65536 bytes", "64 KiB")
    # without a Content-Length (chunked), the body is cut off while it arrives
    chunks = iter([over[:40_000], over[40_000:]])
    assert_error(client.post("/api/explain", content=chunks, headers=AUTH), 413, "more than 65536 bytes")
    # within the limit: read, and refused for its content instead
    assert_error(client.post("/api/explain", content=json.dumps({"prompt": "the " * 15_000}),
                             headers=AUTH), 400, "15001 tokens", "--max-prompt-tokens")


def test_limits_are_checked():
    with pytest.raises(ValueError, match="queue must be a positive integer"):
        Limits(queue=0)
    assert Limits().for_context(4096).prompt_tokens == 2048
    assert Limits().for_context(512).prompt_tokens == 512
    assert Limits().for_context(None).prompt_tokens == 2048
    assert Limits(prompt_tokens=10).for_context(512).prompt_tokens == 10


# -------------------------------------------------------------------------------------------- security

def test_token(client):
    assert_error(client.get("/api/info"), 401, "access token")
    assert_error(client.get("/api/info", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(client.get("/api/info", headers={"Authorization": f"Basic {TOKEN}"}), 401)
    assert_error(client.get("/api/info?token=wrong"), 401)
    assert_error(client.post("/api/explain", json={"prompt": PROMPT}), 401)
    assert client.get("/api/info", headers=AUTH).status_code == 200
    assert client.get(f"/api/info?token={TOKEN}").status_code == 200
    # the page and its files are package files: no token needed
    assert client.get("/").status_code == 200
    assert client.get("/").headers["content-type"].startswith("text/html")
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/nothing.js").status_code == 404


def test_host_check(session):
    app = create_app(session, token=TOKEN, allowed_hosts=allowed_hosts(PORT))
    for host in (f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"[::1]:{PORT}", f"LOCALHOST:{PORT}"):
        with TestClient(app, base_url=f"http://{host}") as c:
            assert c.get("/api/info", headers=AUTH).status_code == 200, host
    for host in ("evil.example", f"evil.example:{PORT}", "127.0.0.1:9999", "127.0.0.1", "localhost"):
        with TestClient(app, base_url=f"http://{host}") as c:
            assert_error(c.get("/api/info", headers=AUTH), 403, "Host", host.lower())
            assert_error(c.get("/"), 403)
    assert allowed_hosts(8000, "192.168.1.5") >= {"192.168.1.5:8000", "127.0.0.1:8000"}
    assert "[fe80::1]:8000" in allowed_hosts(8000, "fe80::1")


def test_no_cors_and_security_headers_on_every_answer(client):
    origin = {"Origin": "http://evil.example"}
    answers = [
        client.get("/", headers=origin), client.get("/static/style.css", headers=origin),
        client.get("/api/info", headers={**AUTH, **origin}), client.get("/api/info", headers=origin),
        client.options("/api/explain", headers={**origin, "Access-Control-Request-Method": "POST"}),
        client.options("/api/explain", headers={**AUTH, **origin, "Access-Control-Request-Method": "POST"}),
        post(client, "/api/explain", {"prompt": PROMPT}, headers={**AUTH, **origin}),
        post(client, "/api/explain", {"prompt": 1}, headers={**AUTH, **origin}),
        client.get("/api/atlas/0/1", headers={**AUTH, **origin}),
    ]
    for answer in answers:
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")], answer.headers
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"


# ------------------------------------------------------------------------------------------------ queue

def test_the_queue_runs_one_request_at_a_time_and_a_full_queue_answers_429(session, model):
    """Hold the model's thread, fill its queue with real requests up to the bound (each known to be queued by a
    semaphore released on submit), check that one more is refused, release, and check that no two model passes
    ever overlapped."""
    size = 3
    running, overlap, passes = [0], [0], [0]
    lock = threading.Lock()

    def enter(module: Any, args: Any) -> None:
        with lock:
            running[0] += 1
            passes[0] += 1
            overlap[0] = max(overlap[0], running[0])

    def leave(module: Any, args: Any, output: Any) -> None:
        with lock:
            running[0] -= 1

    handles = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave)]
    try:
        with client_for(session, limits=Limits(queue=size)) as c:
            worker = c.app.state.worker
            held, release = threading.Event(), threading.Event()
            blocker = worker.submit(lambda: (held.set(), release.wait(STUCK)))
            assert held.wait(STUCK)  # the blocker left the queue: the thread runs it
            queued = threading.Semaphore(0)
            submit = worker.submit

            def counted(job: Any) -> Any:
                future = submit(job)
                queued.release()
                return future

            worker.submit = counted
            results: list[Any] = [None] * size
            bodies = [{"prompt": PROMPT}, {"prompt": PROMPT, "method": "cp-lrp"}, {"prompt": "the dog"}]

            def request(i: int) -> None:
                path = "/api/latents" if i == 1 else "/api/explain"
                results[i] = post(c, path, bodies[i])

            threads = [threading.Thread(target=request, args=(i,)) for i in range(size)]
            for thread in threads:
                thread.start()
            for _ in range(size):
                assert queued.acquire(timeout=STUCK)
            full = post(c, "/api/explain", {"prompt": PROMPT})
            assert_error(full, 429, "busy", "3 requests", "--queue")
            assert full.headers["retry-after"] == "1"
            with c.stream("POST", "/api/generate", json={"prompt": PROMPT, "max_new_tokens": 2}, headers=AUTH) as r:
                assert r.status_code == 429  # refused before its stream starts
            assert passes[0] == 0  # nothing ran on the model while it was held
            release.set()
            for thread in threads:
                thread.join(STUCK)
            blocker.result(STUCK)
            worker.submit = submit
    finally:
        for handle in handles:
            handle.remove()
    assert [r.status_code for r in results] == [200] * size, [r.text for r in results]
    assert passes[0] >= size and overlap[0] == 1 and running[0] == 0
    assert results[2].json()["tokens"] == ["[BOS]", "the", " dog"]


def test_worker_passes_errors_on_and_close_cancels_the_waiting_jobs():
    from concurrent.futures import CancelledError

    from attnlrp.serve.limits import RequestError
    from attnlrp.serve.worker import ModelWorker, QueueFull

    worker = ModelWorker(2)
    with pytest.raises(ZeroDivisionError):
        worker.submit(lambda: 1 / 0).result(STUCK)
    held, release = threading.Event(), threading.Event()
    running = worker.submit(lambda: (held.set(), release.wait(STUCK), "finished")[2])
    assert held.wait(STUCK)
    waiting = [worker.submit(lambda: "never") for _ in range(2)]
    with pytest.raises(QueueFull):
        worker.submit(lambda: "refused")
    closer = threading.Thread(target=worker.close)
    closer.start()
    for future in waiting:
        with pytest.raises(CancelledError):
            future.result(STUCK)
    release.set()
    closer.join(STUCK)
    assert running.result(STUCK) == "finished"
    with pytest.raises(RequestError, match="shutting down"):
        worker.submit(lambda: None)


# ----------------------------------------------------------------------------------------------- atlas

def documents(count: int = 9, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 16))) for _ in range(count)]


@pytest.fixture(scope="module")
def atlas_file(model, tok, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("atlas") / "atlas.sqlite"
    build_atlas(model, tok, documents(), db, top_k=3, window=6, batch_size=3, chunk_size=6, layers=[1], progress=False).close()
    return db


def test_atlas(model, tok, atlas_file):
    session = ServeSession.create(model, tok, source="tiny-llama", atlas=atlas_file)
    with client_for(session) as c:
        info = c.get("/api/info", headers=AUTH).json()
        assert info["atlas"]["layers"] == [1] and info["atlas"]["file"] == "atlas.sqlite"
        assert "atlas_hint" not in info and "path" not in info["atlas"]
        answer = c.get("/api/atlas/1/7", headers=AUTH).json()
        with Atlas.open(atlas_file) as atlas:
            expected = concept_dict(atlas.describe(), 1, 7, {k: atlas.samples(1, 7, by=k) for k in ("actmax", "relmax")})
        del expected["atlas"]["path"]
        _close(answer, expected)
        assert len(answer["actmax"]) == 3
        assert len(c.get("/api/atlas/1/7?top=1", headers=AUTH).json()["relmax"]) == 1
        assert_error(c.get("/api/atlas/0/7", headers=AUTH), 404, "layer 0 is not in this atlas")
        assert_error(c.get("/api/atlas/1/64", headers=AUTH), 404, "neuron 64 does not exist")
        assert_error(c.get("/api/atlas/1/7?top=0", headers=AUTH), 400, "top")
        assert_error(c.get("/api/atlas/1/x", headers=AUTH), 404)
        assert_error(c.get("/api/atlas/1/7"), 401)


def test_no_atlas(client):
    assert_error(client.get("/api/atlas/1/7", headers=AUTH), 404, "no atlas loaded", "--atlas", "concepts build")


# ---------------------------------------------------------------------------------------------- images

@pytest.fixture(scope="module")
def digits():
    from attnlrp.models import load_model

    loaded = load_model(str(Path(attnlrp.__file__).parent / "evaluation" / "datasets" / "digits-vit"))
    return ServeSession.from_loaded(loaded)


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_explain_image(digits):
    from attnlrp.vision import ImageExplainer

    ink = (np.random.RandomState(0).rand(8, 8) * 255).astype(np.uint8)
    pixels = torch.from_numpy(ink.astype(np.float32) / 255.0).unsqueeze(0)
    expected = ImageExplainer(digits.model).explain(pixels)
    with torch.no_grad():
        logits = digits.model(pixel_values=pixels.unsqueeze(0)).logits[0].double()
    probability = float(torch.softmax(logits, -1)[expected.target.token_id])
    with client_for(digits) as c:
        info = c.get("/api/info", headers=AUTH).json()
        assert info["kind"] == "image-cls" and info["image"]["width"] == 8 and info["image"]["channels"] == 1
        raw = c.post("/api/explain-image", content=png(ink), headers={**AUTH, "content-type": "image/png"}).json()
        assert raw["class_id"] == expected.target.token_id and raw["label"] == expected.target.label
        assert raw["probability"] == pytest.approx(probability, rel=1e-6)
        assert (raw["height"], raw["width"], raw["image_height"], raw["image_width"]) == (4, 4, 8, 8)
        assert np.allclose(raw["relevance"], expected.patch_relevance.numpy(), atol=1e-6)
        assert np.allclose(raw["pixels"], expected.pixel_relevance.numpy(), atol=1e-6)
        url = "data:image/png;base64," + base64.b64encode(png(ink)).decode()
        targeted = post(c, "/api/explain-image", {"image": url, "target": 3, "method": "cp-lrp"}).json()
        other = ImageExplainer(digits.model, method="cp-lrp").explain(pixels, target=3)
        assert targeted["class_id"] == 3 and np.allclose(targeted["relevance"], other.patch_relevance.numpy(),
                                                         atol=1e-6)
        query = c.post("/api/explain-image?target=3&method=cp-lrp", content=png(ink),
                       headers={**AUTH, "content-type": "image/png"}).json()
        assert query["relevance"] == targeted["relevance"]
        # an RGB image is converted to the model's one channel and resized to its 8×8 input
        rgb = np.repeat(np.kron(ink, np.ones((2, 2), np.uint8))[:, :, None], 3, axis=2)
        assert c.post("/api/explain-image", content=png(rgb), headers={**AUTH, "content-type": "image/png"}
                      ).status_code == 200
        image = {**AUTH, "content-type": "image/png"}
        assert_error(c.post("/api/explain-image", content=b"not an image", headers=image), 400, "not an image")
        assert_error(c.post("/api/explain-image", content=b"x", headers={**AUTH, "content-type": "text/plain"}),
                     415, "Content-Type")
        assert_error(post(c, "/api/explain-image", {"image": "http://evil.example/x.png"}), 400, "data: URL")
        assert_error(c.post("/api/explain-image", content=b"\0" * (2 * 1024 * 1024 + 1), headers=image), 413,
                     "2 MiB")
        huge = png(np.zeros((4100, 4100), np.uint8))  # a few KB of PNG, 16.8 million pixels
        assert_error(c.post("/api/explain-image", content=huge, headers=image), 400, "4100×4100")
        assert_error(post(c, "/api/explain", {"prompt": PROMPT}), 400, "image classifier")


# --------------------------------------------------------------------------------------------- exports

def test_export_writes_only_server_named_files_into_the_export_dir(session, tmp_path):
    folder = tmp_path / "exports"
    with client_for(session, export_dir=folder) as c:
        assert c.get("/api/info", headers=AUTH).json()["export"] is True
        explanation = post(c, "/api/explain", {"prompt": "<script>alert(1)</script> the"}).json()
        first = post(c, "/api/export", {"kind": "html", "view": {"explanation": explanation, "note": "<b>x</b>"}})
        assert first.json() == {"name": "attnlrp-view-1.html"}
        second = post(c, "/api/export", {"kind": "html", "view": {"explanation": explanation}}).json()
        assert second == {"name": "attnlrp-view-2.html"}
        view = {"state": {"prompt": "../../etc/passwd"}, "name": "../../evil.json"}
        assert post(c, "/api/export", {"kind": "json", "view": view}).json() == {"name": "attnlrp-view-1.json"}
        assert_error(post(c, "/api/export", {"kind": "json", "view": view, "name": "x.json"}), 400, "unknown field")
        assert_error(post(c, "/api/export", {"kind": "exe", "view": view}), 400, "html, json")
        assert_error(post(c, "/api/export", {"kind": "html", "view": {"explanation": {"tokens": 3}}}), 400,
                     "cannot be read back")
        with c.stream("POST", "/api/generate", json={"prompt": PROMPT, "max_new_tokens": 2}, headers=AUTH) as r:
            generation = dict(read_events(r))["relevance"]
        assert post(c, "/api/export", {"kind": "html", "view": {"generation": generation}}).json()["name"] == \
            "attnlrp-view-3.html"
    assert sorted(os.listdir(tmp_path)) == ["exports"]
    assert sorted(os.listdir(folder)) == ["attnlrp-view-1.html", "attnlrp-view-1.json", "attnlrp-view-2.html",
                                          "attnlrp-view-3.html"]
    page = (folder / "attnlrp-view-1.html").read_text()
    assert page.startswith("<!doctype html>") and "<script>alert(1)" not in page and "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "http" not in page.replace("http-equiv", "")  # nothing from elsewhere
    assert json.loads((folder / "attnlrp-view-1.json").read_text()) == view


# ------------------------------------------------------------------------------------------------- CLI

def test_cli_serves_a_saved_model(model, tok, tmp_path):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    url_file = tmp_path / "url.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "attnlrp.cli", "serve", "--model", str(folder), "--port", "0", "--token", TOKEN,
         "--url-file", str(url_file), "--max-new-tokens", "5", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # blocks until the server accepts connections (or exits: "")
        assert line.startswith("attnlrp explorer: http://127.0.0.1:"), (line, server.stderr and server.stderr.read())
        url = line.split(": ", 1)[1].strip()
        assert url_file.read_text().strip() == url and url.endswith(f"/?token={TOKEN}")
        port = int(url.split(":")[2].split("/")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=STUCK)
        connection.request("GET", "/api/info", headers=AUTH)
        answer = connection.getresponse()
        info = json.loads(answer.read())
        assert answer.status == 200 and info["limits"]["new_tokens"] == 5 and info["model"] == str(folder)
        connection.request("GET", "/api/info")
        refused = connection.getresponse()
        assert refused.status == 401 and "error" in json.loads(refused.read())
        connection.close()
    finally:
        server.terminate()
        server.communicate(timeout=STUCK)


def test_cli_refuses_a_busy_port_and_warns_about_the_network(tmp_path):
    import socket

    from attnlrp.cli import build_parser
    from attnlrp.cli.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    args = build_parser().parse_args(["serve", "--port", "0"])
    assert (args.port, args.host, args.token, args.queue, args.max_new_tokens) == (0, "127.0.0.1", None, 8, 128)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "70000"])
    from attnlrp.cli.serve import _listen

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(OSError, match="choose another --port"):
            _listen("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


# ------------------------------------------------------------------------------------------- SmolLM2

@pytest.mark.real_model
def test_smollm2_explain_and_generate(smollm2):
    session = ServeSession.from_loaded(smollm2)
    prompt = "Lisbon is the capital of"
    with client_for(session) as c:
        info = c.get("/api/info", headers=AUTH).json()
        assert (info["layers"], info["heads"], info["neurons"]) == (30, 9, 1536)
        assert info["limits"]["prompt_tokens"] == 2048
        answer = post(c, "/api/explain", {"prompt": prompt}).json()
        with c.stream("POST", "/api/generate", json={"prompt": prompt, "max_new_tokens": 2}, headers=AUTH) as r:
            events = list(read_events(r))
    expected = Explainer(smollm2.model, smollm2.tokenizer, model_name=smollm2.source).explain(prompt).to_dict()
    _close(answer, expected)
    assert answer["target"]["token"] == " Portugal" and answer["special"][0]
    generation = explain_generation(smollm2.model, smollm2.tokenizer, prompt, max_new_tokens=2,
                                    model_name=smollm2.source).to_dict()
    assert [name for name, _ in events] == ["token", "token", "relevance", "done"]
    assert np.allclose(events[2][1]["matrix"], generation["matrix"], rtol=1e-5, atol=1e-6)
    assert events[0][1]["text"] == " Portugal"
