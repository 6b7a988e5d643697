"""python -m eval.bench.serve: a closed-loop load generator for any server that speaks the same request shapes
(ours, or TEI, Infinity or vLLM where they run): --concurrency clients each send one input per request, the next
as soon as the last is answered, until --requests have been answered.

    python -m eval.bench.serve --url http://127.0.0.1:8000 --endpoint classify --data SST-2/dev.tsv \\
        --concurrency 32 --requests 1000 --json serve.json

Reports requests/s, inputs/s, p50/p90/p99 latency, errors by status, and the mean batch size where the server
exposes TEI's te_batch_next_size histogram at /metrics (ours does). --data is an SST-2 TSV (texts) or a folder of
images; every client keeps one HTTP connection open, as a production client would.
"""
import argparse
import base64
import http.client
import json
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from eval.data.sst2 import read_sst2
from eval.store import write_json_atomic
from npu_models.cli import cli_main
from npu_models.errors import UserError

ENDPOINTS = {"classify": "/classify", "embeddings": "/v1/embeddings"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def read_inputs(data: Path) -> list:
    """The request inputs: each sentence of an SST-2 TSV, or each image of a folder as an image item."""
    if data.is_dir() and not (data / "dev.tsv").is_file():
        images = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"--data {data} holds no images (.jpg, .png, ...) and no dev.tsv.")
        return [{"image": base64.b64encode(p.read_bytes()).decode()} for p in images]
    return [example.sentence for example in read_sst2(data)]


def batch_histogram(connection: http.client.HTTPConnection) -> tuple[float, float] | None:
    """(sum, count) of te_batch_next_size at /metrics, or None where the server has no such metric."""
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        text = response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    found = [re.search(rf"^te_batch_next_size_{part}(?:{{[^}}]*}})? (\S+)$", text, re.M) for part in ("sum", "count")]
    return None if not all(found) else (float(found[0].group(1)), float(found[1].group(1)))


class ClosedLoop:
    """`concurrency` clients on one keep-alive connection each, sending `requests` in all; each client sends its
    next request as soon as its last is answered. Statuses are counted, and the latency of each 200 kept."""

    def __init__(self, url: str, path: str, inputs: list, requests: int, model: str | None, timeout: float):
        address = urlsplit(url)
        if address.scheme != "http" or not address.hostname:
            raise UserError(f"--url {url} is not an http://host:port URL.")
        self.host, self.port, self.timeout = address.hostname, address.port or 80, timeout
        self.path, self.inputs, self.requests, self.model = path, inputs, requests, model
        self.lock, self.sent = threading.Lock(), 0
        self.latencies, self.statuses = [], {}

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def next_body(self) -> str | None:
        """The next request's body (each input as a list of one: the form every such server takes; Infinity
        takes no bare string), or None once all are sent."""
        with self.lock:
            if self.sent >= self.requests:
                return None
            index, self.sent = self.sent, self.sent + 1
        return json.dumps({"input": [self.inputs[index % len(self.inputs)]],
                           **({"model": self.model} if self.model else {})})

    def client(self) -> None:
        connection = self.connect()
        while (body := self.next_body()) is not None:
            started = time.perf_counter()
            try:
                connection.request("POST", self.path, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as err:
                status = type(err).__name__
                connection.close()
                connection = self.connect()
            elapsed = time.perf_counter() - started
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 200:
                    self.latencies.append(elapsed)

    def run(self, concurrency: int) -> float:
        """Seconds until every request was answered."""
        started = time.perf_counter()
        threads = [threading.Thread(target=self.client, daemon=True) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started


def run_load(url: str, path: str, inputs: list, concurrency: int, requests: int, model: str | None = None,
             timeout: float = 300) -> dict:
    """The closed loop's result: throughput, latency percentiles (ms), statuses, and the mean batch size where
    the server counts its batches in te_batch_next_size."""
    loop = ClosedLoop(url, path, inputs, requests, model, timeout)
    before = batch_histogram(loop.connect())
    seconds = loop.run(concurrency)
    after = batch_histogram(loop.connect())
    latencies, ok = loop.latencies, len(loop.latencies)
    quantiles = statistics.quantiles(latencies, n=100) if ok >= 2 else [latencies[0]] * 99 if ok else [None] * 99
    mean_batch = None
    if before is not None and after is not None and after[1] > before[1]:
        mean_batch = (after[0] - before[0]) / (after[1] - before[1])
    return {"url": url, "endpoint": path, "concurrency": concurrency, "requests": requests, "ok": ok,
            "statuses": {str(k): v for k, v in sorted(loop.statuses.items(), key=str)}, "seconds": seconds,
            "requests_per_second": ok / seconds, "inputs_per_second": ok / seconds,
            "latency_ms_p50": milliseconds(quantiles[49]), "latency_ms_p90": milliseconds(quantiles[89]),
            "latency_ms_p99": milliseconds(quantiles[98]), "mean_batch_size": mean_batch,
            "date": time.strftime("%Y-%m-%d")}


def milliseconds(seconds):
    return None if seconds is None else 1000 * seconds


def format_report(result: dict) -> str:
    def shown(value, spec):
        return "-" if value is None else format(value, spec)
    rows = [("url", result["url"] + result["endpoint"]), ("concurrency", result["concurrency"]),
            ("answered 200", f"{result['ok']} of {result['requests']}"), ("statuses", result["statuses"]),
            ("requests/s", shown(result["requests_per_second"], ".1f")),
            ("inputs/s", shown(result["inputs_per_second"], ".1f")),
            ("p50 / p90 / p99 ms", " / ".join(shown(result[f"latency_ms_{p}"], ".0f") for p in ("p50", "p90", "p99"))),
            ("mean batch size", shown(result["mean_batch_size"], ".1f"))]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m eval.bench.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--endpoint", default="classify", choices=sorted(ENDPOINTS),
                        help="classify (POST /classify) | embeddings (POST /v1/embeddings)")
    parser.add_argument("--data", required=True, type=Path, help="SST-2 dev.tsv (texts) or a folder of images")
    parser.add_argument("--concurrency", type=int, default=32, help="clients in the closed loop (default 32)")
    parser.add_argument("--requests", type=int, default=1000, help="requests answered in all (default 1000)")
    parser.add_argument("--warmup", type=int, default=0, help="requests sent first and not counted (default 0)")
    parser.add_argument("--model", help="the request's \"model\" field, for servers that route by it")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if not args.data.exists():
        raise UserError(f"--data {args.data} does not exist; check the path.")
    if args.concurrency < 1 or args.requests < 1 or args.warmup < 0:
        raise UserError("--concurrency and --requests must be at least 1, --warmup at least 0.")
    inputs = read_inputs(args.data)
    if args.warmup:
        run_load(args.url, ENDPOINTS[args.endpoint], inputs, args.concurrency, args.warmup, args.model)
    result = run_load(args.url, ENDPOINTS[args.endpoint], inputs, args.concurrency, args.requests, args.model)
    print(format_report(result))
    if args.json:
        write_json_atomic(args.json, result)
    return 0 if result["ok"] == result["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
