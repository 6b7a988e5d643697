"""python -m npu_models.serve: one model behind HTTP, with dynamic batching, on one device or one replica per
device.

    python -m npu_models.serve --model bert --checkpoint checkpoint-12630 --device npu:0 --port 8000
    python -m npu_models.serve --model vlmo --checkpoint vlmo_base_patch16_384_coco.pt --vocab vocab.txt \\
        --devices npu:0,npu:1
    torchrun --nproc_per_node 2 -m npu_models.serve --model vlmo --checkpoint vlmo.pt --tp 2 --device npu
    python -m npu_models.serve                      # the demo: BERT with RANDOM weights on the bundled vocab

Endpoints by the model's task: POST /classify (BERT, ViT; vLLM's shape), POST /v1/embeddings and POST /score
(BLIP, VLMo retrieval; OpenAI's and vLLM's shapes), POST /vqa (VLMo VQA; ViLBERT with --detector-weights); GET /health, GET /v1/models,
GET /metrics (Prometheus, TEI's names). The server listens at once; /health answers 503 while the model loads
and warms up, 200 once it is ready. On SIGTERM it stops accepting, finishes what is in flight within
--shutdown-timeout and exits 0.
"""
import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path

from eval.cli import positive_int
from npu_models import parallel, runtime
from npu_models.cli import cli_main
from npu_models.errors import UserError, arg, check_paths_exist
from npu_models.serve.app import Limits, ServeState, create_app, follow_batches
from npu_models.serve.model import load_served

INPUT_PATHS = ("checkpoint", "config", "vocab", "answers", "detector_weights")


def parse_args(argv):
    limits = Limits()
    parser = argparse.ArgumentParser(prog="python -m npu_models.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bert", help="short or registry name (default bert)")
    parser.add_argument("--checkpoint", type=Path, help="official checkpoint, or a converted or quantized directory; "
                        "omitted: the demo, with RANDOM weights")
    parser.add_argument("--config", type=Path,
                        help="hyper-parameters the checkpoint cannot reveal (as for the eval commands)")
    parser.add_argument("--vocab", type=Path, help="vocab.txt (default: beside or inside the checkpoint)")
    parser.add_argument("--answers", type=Path, help="VQA: answer2label.txt (default: beside or inside the checkpoint)")
    parser.add_argument("--detector-weights", type=Path, help="ViLBERT: torchvision's COCO Faster R-CNN weights, run "
                        "on each request's image as eval.vqa runs them")
    parser.add_argument("--device", default="auto", help="auto | npu[:N] | cuda[:N] | cpu (default auto)")
    parser.add_argument("--devices", help="one replica per device, comma-separated (npu:0,npu:1); each has its own "
                        "batcher and a request goes to the least loaded")
    parser.add_argument("--dtype", help="auto | fp32 | fp16 | bf16 (default: the device's)")
    parser.add_argument("--tp", type=positive_int, default=1, help="one model over N chips: run under torchrun "
                        "--nproc_per_node N; rank 0 takes the requests and every rank runs each batch")
    parser.add_argument("--graph", action="store_true", help="graph mode; warm-up compiles or captures every batch "
                        "shape before the server is ready")
    parser.add_argument("--compile-cache", type=Path, metavar="DIR", help="with --graph, as for the eval commands")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port, printed)")
    parser.add_argument("--max-batch-size", type=positive_int, default=limits.max_batch_size,
                        help=f"inputs per batch, and per request (default {limits.max_batch_size})")
    parser.add_argument("--max-batch-tokens", type=positive_int, default=limits.max_batch_tokens,
                        help=f"tokens per batch (default {limits.max_batch_tokens})")
    parser.add_argument("--max-wait-ms", type=float, default=limits.max_wait_ms,
                        help=f"longest an input waits for others to share its batch (default {limits.max_wait_ms:g})")
    parser.add_argument("--max-queue", type=positive_int, default=limits.max_queue,
                        help=f"requests admitted at once; more get 429 (default {limits.max_queue})")
    parser.add_argument("--max-payload", type=positive_int, default=limits.max_payload,
                        help=f"bytes of one request body; more get 413 (default {limits.max_payload})")
    parser.add_argument("--workers", type=positive_int, default=limits.workers,
                        help=f"threads preparing inputs beside the device (default {limits.workers})")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="seconds to finish in-flight requests after SIGTERM (default 30)")
    return parser.parse_args(argv)


def check_before_serving(args) -> list:
    """Everything the arguments alone can get wrong, refused before the model is read: the devices, the dtype,
    every input path (all missing ones at once)."""
    check_paths_exist({name: getattr(args, name) for name in INPUT_PATHS})
    parallel.check_world(args.tp)
    if parallel.world_size() != args.tp:
        raise UserError(f"{parallel.world_size()} processes for {arg('tp', args.tp)}: a server splits one model over "
                        f"all its processes; launch {parallel.torchrun_command(args.tp)}, or run one replica per "
                        f"device in one process with {arg('devices')}.")
    if args.tp > 1 and args.devices:
        raise UserError(f"{arg('devices')} runs one whole model per device; with {arg('tp', args.tp)} each process "
                        "drives its own chip (LOCAL_RANK): leave one of the two out.")
    devices = [runtime.parse_device(d.strip()) for d in args.devices.split(",")] if args.devices else \
        [runtime.parse_device(args.device)]
    for device in devices:
        runtime.parse_dtype(args.dtype, device)
    if args.graph:
        runtime.check_compile_cache(args.compile_cache)
    return devices


def serve(args, devices) -> None:
    import uvicorn

    def load():
        return [load_served(args.model, args.checkpoint, str(device), args.dtype, args.graph, args.tp,
                            args.max_batch_size, args.vocab, args.answers, args.config, args.compile_cache,
                            args.detector_weights) for device in devices]

    if not parallel.is_main_process():  # another rank of a tensor-parallel server: run what rank 0 hands over
        follow_batches(load()[0])
        return

    limits = Limits(args.max_batch_size, args.max_batch_tokens, args.max_wait_ms, args.max_queue, args.max_payload,
                    args.workers)
    describe = {"model": args.model, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                "random_weights": args.checkpoint is None, "tp": args.tp, "dp": len(devices),
                "limits": {k: v for k, v in dataclasses.asdict(limits).items() if k != "workers"}}
    state = ServeState(load, limits, describe)
    server = named_server(uvicorn.Config(create_app(state), host=args.host, port=args.port, log_level="warning",
                                         timeout_graceful_shutdown=args.shutdown_timeout, lifespan="on"), state)

    def fatal(message: str):
        print(f"error: {message}", file=sys.stderr, flush=True)
        server.failed = True
        server.should_exit = True
    state.on_fatal = fatal
    # uvicorn drains on SIGTERM, then raises the signal again under the handler that was there before it: with
    # this one there, a drained stop ends the process normally (exit 0), as process managers expect
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    if server.failed:
        sys.exit(2)


def named_server(config, state):
    """uvicorn's server, saying where it listens once it does, and draining (503 on open connections) from the
    moment SIGTERM arrives. Defined here: uvicorn is imported only when a server starts."""
    import uvicorn

    class NamedServer(uvicorn.Server):
        failed = False

        async def startup(self, sockets=None):
            await super().startup(sockets)
            for server in self.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    print(f"listening on http://{host}:{port} (GET /health answers 200 once the model is ready)",
                          file=sys.stderr, flush=True)

        def handle_exit(self, sig, frame):
            state.status = "draining"
            super().handle_exit(sig, frame)

    return NamedServer(config)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    devices = check_before_serving(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the worker pool is the parallelism
    serve(args, devices)
    return 0


if __name__ == "__main__":
    sys.exit(main())
