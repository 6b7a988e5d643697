"""The HTTP side: FastAPI routes in the shapes existing servers use, admission (429 before any work), the worker
pool that prepares inputs beside the device, one batcher per device, health and Prometheus metrics.

A request: endpoint known? -> ready? (503) -> room in the queue? (429, Retry-After) -> body within
--max-payload? (413) -> parsed and checked (422) -> inputs prepared in the worker pool (422 for an undecodable
image or an over-long text) -> the least-loaded device's batcher -> the answer (500 if the device failed).
"""
import asyncio
import json
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from npu_models import parallel, runtime
from npu_models.errors import UserError
from npu_models.serve.adapters import Adapter, adapters_for
from npu_models.serve.batcher import BatchFailed, Batcher
from npu_models.serve.metrics import ServeMetrics
from npu_models.serve.requests import RequestError

ENDPOINTS = ("/classify", "/v1/embeddings", "/score", "/vqa")
# Under tensor parallelism the other ranks wait for rank 0's next batch inside a collective, which times out
# (NPU_MODELS_DIST_TIMEOUT, 300 s by default): an idle rank 0 sends this every KEEP_ALIVE_S instead.
KEEP_ALIVE, KEEP_ALIVE_S = ("keep-alive",), 30.0


@dataclass
class Limits:
    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_wait_ms: float = 5.0
    max_queue: int = 256            # requests admitted and not yet answered
    max_payload: int = 16 * 2**20   # bytes of one request body
    workers: int = 2                # the preprocessing pool


@dataclass
class Replica:
    """One device's model, its endpoints and its batcher."""
    served: object
    adapters: dict[str, Adapter]
    batcher: Batcher | None = None


class ServeState:
    """What the routes share: the replicas once loaded, the lifecycle status, the in-flight count."""

    def __init__(self, load, limits: Limits, describe: dict):
        self.load, self.limits, self.describe = load, limits, describe
        self.metrics = ServeMetrics()
        self.replicas: list[Replica] = []
        self.status, self.detail = "loading", None  # loading | warming | ready | draining | failed
        self.device_error: str | None = None
        self.in_flight = 0
        self.pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="preprocess")
        self.on_fatal = None  # set by the CLI: stops the server when the model cannot be loaded
        self.keep_alive: asyncio.Task | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            served = await loop.run_in_executor(None, self.load)
            self.replicas = [Replica(s, adapters_for(s, self.limits.max_batch_size)) for s in served]
            self.status = "warming"
            for replica in self.replicas:
                replica.batcher = Batcher(self.run_on(replica), self.limits.max_batch_size,
                                          self.limits.max_batch_tokens, self.limits.max_wait_ms / 1000,
                                          self.batch_done, name=str(replica.served.device))
                await loop.run_in_executor(replica.batcher.device_thread, self.warm_up, replica)
                replica.batcher.start()
                if replica.served.tp > 1:
                    self.keep_alive = loop.create_task(self.keep_followers(replica))
            self.status = "ready"
        except Exception as err:  # a model that cannot be loaded: said once, then the server stops
            message = err.command_line_message() if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            self.status, self.detail = "failed", message
            if self.on_fatal is not None:
                self.on_fatal(self.detail)

    async def keep_followers(self, replica: Replica) -> None:
        """Every KEEP_ALIVE_S, a no-op to the other ranks, on the device thread (in order with the batches)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(KEEP_ALIVE_S)
            await loop.run_in_executor(replica.batcher.device_thread, parallel.broadcast_from_main, KEEP_ALIVE)

    async def stop(self) -> None:
        self.status = "draining"
        if self.keep_alive is not None:
            self.keep_alive.cancel()
        for replica in self.replicas:
            if replica.batcher is not None:
                await replica.batcher.stop()
            if replica.served.tp > 1:  # the other ranks stop following (after the last batch: the thread is done)
                parallel.broadcast_from_main(None)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def warm_up(self, replica: Replica) -> None:
        """Every shape the requests will bring, once (graph mode compiles or captures them here, never on a
        request's path)."""
        for adapter in replica.adapters.values():
            for key, batch in adapter.warmup():
                self.run_on(replica)(key, batch)

    def run_on(self, replica: Replica):
        """The batch function of a replica's batcher: graph mode pads the rows to its one static batch size; under
        tensor parallelism every other rank is handed the batch first and runs it too (follow_batches)."""
        rows = self.limits.max_batch_size if replica.served.graph else None

        def run(key, batch):
            count = len(batch)
            if rows and count < rows:
                batch = batch + [batch[0]] * (rows - count)  # real rows as filler: no empty attention row
            if replica.served.tp > 1:
                parallel.broadcast_from_main((key, batch))
            return run_batch(replica.adapters, key, batch)[:count]
        return run

    def batch_done(self, key, size: int, tokens: int, seconds: float, error, waits: list[float]) -> None:
        m = self.metrics
        m.batch_size.observe(size)
        m.batch_tokens.observe(tokens)
        m.inference_duration.observe(seconds)
        for wait in waits:
            m.queue_duration.observe(wait)
        if error is not None:
            m.batch_failures.inc()
            self.device_error = f"the last batch failed on the device: {type(error).__name__}: {error}"
        else:
            self.device_error = None

    # ---- requests ------------------------------------------------------------------------------------------

    def health(self) -> tuple[int, dict]:
        body = {"status": self.status, "model": self.describe.get("model")}
        if self.detail:
            body["detail"] = self.detail
        if self.device_error:
            body.update(status="device_error", detail=self.device_error)
        return (200 if self.status == "ready" and not self.device_error else 503), body

    def replica_for(self) -> Replica:
        return min(self.replicas, key=lambda r: r.batcher.load())

    async def handle(self, endpoint: str, request: Request) -> JSONResponse:
        started = time.perf_counter()
        status, headers = 200, {}
        try:
            body = await self.answer(endpoint, request)
        except RequestError as err:
            status, body = err.status, err.body()
            if status == 429:
                headers["Retry-After"] = "1"
        except BatchFailed as err:
            status = 500
            body = RequestError(500, f"the device failed on this request's batch ({err}); the server is still up, "
                                     "see GET /health", "server_error").body()
        except Exception as err:  # a fault of ours: the client still gets the JSON error shape, the log the trace
            traceback.print_exc()
            status = 500
            body = RequestError(500, f"internal error ({type(err).__name__}: {err}); the server is still up",
                                "server_error").body()
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.request_duration.labels(endpoint).observe(time.perf_counter() - started)
        return JSONResponse(body, status_code=status, headers=headers)

    async def answer(self, endpoint: str, request: Request) -> dict:
        if self.status != "ready":
            raise RequestError(503, f"the server is {self.status}: retry once GET /health answers 200.", "unavailable")
        adapter = self.replicas[0].adapters.get(endpoint)
        if adapter is None:
            raise RequestError(404, f"{self.replicas[0].served.name} does not serve {endpoint}; it serves "
                                    f"{', '.join(self.replicas[0].adapters)}.", "not_found")
        if self.in_flight >= self.limits.max_queue:  # before reading the body: a full queue costs nothing more
            raise RequestError(429, f"the queue is full ({self.limits.max_queue} requests, --max-queue): retry "
                                    "after a moment.", "rate_limit_exceeded")
        self.in_flight += 1
        self.metrics.queue_size.set(self.in_flight)
        try:
            parsed = adapter.parse(await self.read_json(request))
            loop = asyncio.get_running_loop()
            prepare_started = time.perf_counter()
            prepared = await loop.run_in_executor(self.pool, adapter.prepare_all, parsed)
            self.metrics.preprocess_duration.observe(time.perf_counter() - prepare_started)
            replica = self.replica_for()
            outputs = await asyncio.gather(*(replica.batcher.submit(p.key, p.tensors, p.tokens) for p in prepared))
            return adapter.respond(parsed, list(outputs), prepared)
        finally:
            self.in_flight -= 1
            self.metrics.queue_size.set(self.in_flight)

    async def read_json(self, request: Request):
        limit = self.limits.max_payload
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"the body is {declared} bytes, over the {limit} this server takes "
                                    "(--max-payload): send fewer or smaller inputs per request.")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise RequestError(413, f"the body is over the {limit} bytes this server takes (--max-payload): send "
                                        "fewer or smaller inputs per request.")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(422, f"the body is not valid JSON ({err}).") from None


def run_batch(adapters: dict[str, Adapter], key: tuple, batch: list[tuple]) -> list:
    """The batch run by the adapter that made its inputs (a batch key starts with its endpoint)."""
    return adapters[key[0]].run(key, batch)


def follow_batches(served) -> None:
    """A rank other than 0 of a tensor-parallel server: run every batch rank 0 hands over (its share of each
    layer; the model's all-reduces meet rank 0's), until rank 0 says stop."""
    adapters = adapters_for(served, 1)
    while (work := parallel.broadcast_from_main()) is not None:
        if work != KEEP_ALIVE:
            key, batch = work
            run_batch(adapters, key, batch)


def create_app(state: ServeState) -> FastAPI:
    async def lifespan(app):
        startup = asyncio.create_task(state.start())
        yield
        startup.cancel()
        await state.stop()

    app = FastAPI(title="npu-models", lifespan=lifespan)
    app.state.serve = state

    for endpoint in ENDPOINTS:
        async def route(request: Request, endpoint=endpoint):
            return await state.handle(endpoint, request)
        app.add_api_route(endpoint, route, methods=["POST"])

    @app.get("/health")
    async def health():
        status, body = state.health()
        return JSONResponse(body, status_code=status)

    @app.get("/v1/models")
    async def models():
        replicas = state.replicas
        description = {**state.describe, "status": state.status}
        if replicas:
            served = replicas[0].served
            description.update(endpoints=list(replicas[0].adapters), dtype=str(served.dtype).replace("torch.", ""),
                               quant=served.quant, devices=[str(r.served.device) for r in replicas],
                               graph=served.graph, compile_s=runtime.compile_seconds(), **runtime.graph_counts())
        return {"object": "list", "data": [{"id": state.describe["model"], "object": "model", "owned_by": "npu-models",
                                            **description}]}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
