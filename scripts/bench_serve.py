"""`make bench-serve`: the explorer's server (attnlrp serve) on the embedded SmolLM2, warm, over real HTTP on
127.0.0.1: a 64-token prompt's heatmap (request to complete response), the first generated token of the stream,
and 20 concurrent clients (status counts: no 5xx, 429 allowed; the process's RSS before, during and after).

The server runs in this process (uvicorn in a thread, the model's worker thread behind it), so the RSS read from
/proc is the server's. Clients are threads using http.client. Replaces its own section of --output.

    python scripts/bench_serve.py [--repeats 7] [--clients 20] [--rounds 5] [--output docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench"
PROMPT_TOKENS = 64


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(app: Any, sock: socket.socket) -> Any:
    """uvicorn on ``sock`` in a daemon thread; returns once it accepts connections."""
    import uvicorn

    ready = threading.Event()

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            ready.set()

    server = Server(uvicorn.Config(app, log_level="error", access_log=False, lifespan="on"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    if not ready.wait(120):
        raise SystemExit("the server did not start")
    return server


def request(port: int, path: str, body: Any = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    connection.request("POST" if body is not None else "GET", path,
                       body=None if body is None else json.dumps(body), headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def first_token_seconds(port: int, body: Any) -> tuple[float, float]:
    """Seconds from sending /api/generate to its first `token` event, and to the end of the stream."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    connection.request("POST", "/api/generate", body=json.dumps(body),
                       headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    first = None
    while line := response.readline():
        if first is None and line.startswith(b"event: token"):
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    connection.close()
    assert first is not None, "no token event"
    return first, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed requests per measurement (median)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of concurrent clients (RSS after each)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per stream")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", help="write the section to this markdown file (docs/benchmarks.md)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    import torch
    from bench import doc_ids, machine_lines, write_section

    from attnlrp.models import load_model
    from attnlrp.serve import ServeSession, allowed_hosts, create_app

    torch.set_num_threads(args.threads)
    rss_start = rss_mib()
    loaded = load_model()
    session = ServeSession.from_loaded(loaded)
    ids = [loaded.tokenizer.bos_token_id] + doc_ids(loaded.tokenizer, PROMPT_TOKENS - 1)
    text = loaded.tokenizer.decode(ids[1:])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # first: the Host check needs the port
    port = sock.getsockname()[1]
    server = start_server(create_app(session, token=TOKEN, allowed_hosts=allowed_hosts(port)), sock)

    explain_body = {"token_ids": ids}
    status, _ = request(port, "/api/explain", explain_body)  # warm-up: the explainer, the rules' set-up
    assert status == 200
    first_token_seconds(port, {"prompt": text, "max_new_tokens": 2})
    rss_warm = rss_mib()

    explain_times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        status, data = request(port, "/api/explain", explain_body)
        explain_times.append(time.perf_counter() - started)
        assert status == 200, data
    firsts, totals = [], []
    for _ in range(args.repeats):
        first, total = first_token_seconds(port, {"prompt": text, "max_new_tokens": args.new_tokens})
        firsts.append(first)
        totals.append(total)

    # concurrent clients: each sends one request of a mix, all at once (a barrier), round after round
    mix = [("/api/explain", explain_body), ("/api/tokenize", {"prompt": text}), ("/api/info", None),
           ("/api/latents", {"token_ids": ids, "top_k": 5}), ("/api/neurons", {"token_ids": ids, "top": 5})]
    statuses: Counter[int] = Counter()
    rss_rounds = []
    slowest = 0.0
    for _ in range(args.rounds):
        barrier = threading.Barrier(args.clients)
        lock = threading.Lock()

        def client(i: int) -> None:
            nonlocal slowest
            path, body = mix[i % len(mix)]
            barrier.wait()
            started = time.perf_counter()
            status, _ = request(port, path, body)
            with lock:
                statuses[status] += 1
                slowest = max(slowest, time.perf_counter() - started)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rss_rounds.append(rss_mib())
    server.should_exit = True

    def ms(values: list[float]) -> str:
        return f"{1000 * statistics.median(values):.0f} ms (min {1000 * min(values):.0f}, max {1000 * max(values):.0f})"

    lines = ["## The explorer's server (`make bench-serve`)", ""] + machine_lines(args.threads, "make bench-serve") + [
        f"- SmolLM2-135M-Instruct, fp32, warm (one explanation and one generation first); uvicorn on 127.0.0.1 in the "
        f"benchmark's process, clients are threads with http.client; medians of {args.repeats}",
        "",
        "| measurement | result |",
        "|---|---|",
        f"| `/api/explain`, {len(ids)}-token prompt, request to complete response | {ms(explain_times)} |",
        f"| `/api/generate`, first `token` event | {ms(firsts)} |",
        f"| `/api/generate`, {args.new_tokens} tokens and their relevance, whole stream | {ms(totals)} |",
        f"| {args.clients} concurrent clients × {args.rounds} rounds (explain, tokenize, info, latents, neurons) | "
        + ", ".join(f"{count} × {status}" for status, count in sorted(statuses.items()))
        + f"; slowest answer {slowest:.1f} s |",
        f"| RSS: before loading / warm / after each round | {rss_start:.0f} / {rss_warm:.0f} / "
        + " / ".join(f"{r:.0f}" for r in rss_rounds) + " MiB |",
    ]
    failures = sum(count for status, count in statuses.items() if status >= 500)
    lines += ["", f"No 5xx: {'yes' if failures == 0 else f'NO ({failures})'}. A 429 is the bounded queue "
              "(`--queue`, default 8) refusing a request while 8 wait; the page says so and the user retries."]
    text_out = "\n".join(lines)
    print(text_out)
    if args.output:
        write_section(args.output, "serve", text_out)
        print(f"section 'serve' written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
