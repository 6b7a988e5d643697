"""python -m eval.bench.naive_server: the naive way to serve a classifier, as the yardstick eval.bench.serve sets our
server against: a transformers text-classification pipeline behind FastAPI, one request at a time, answering
POST /classify in vLLM's shape. Needs the test extra (transformers) and the serve extra (FastAPI, uvicorn).

    python -m eval.bench.naive_server --checkpoint checkpoint-12630 --port 8001
"""
import argparse
import sys
import threading
from pathlib import Path

from npu_models.cli import cli_main
from npu_models.errors import UserError


def create_app(checkpoint: Path):
    import torch
    import transformers
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    classifier = transformers.pipeline("text-classification", model=str(checkpoint), tokenizer=str(checkpoint),
                                       device=-1, top_k=None, torch_dtype=torch.float32)
    labels = [classifier.model.config.id2label[i] for i in range(classifier.model.config.num_labels)]
    one_at_a_time = threading.Lock()
    app = FastAPI()

    @app.post("/classify")
    def classify(body: dict):  # a plain def: FastAPI runs it in its thread pool
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not texts or not all(isinstance(t, str) and t for t in texts):
            return JSONResponse({"error": {"message": "`input` must be a text or a list of texts", "type":
                                           "invalid_request_error", "code": 422}}, status_code=422)
        with one_at_a_time:
            scored = classifier(texts, truncation=True)
        data = []
        for index, scores in enumerate(scored):
            by_label = {s["label"]: s["score"] for s in scores}
            probs = [by_label[label] for label in labels]
            data.append({"index": index, "label": labels[max(range(len(probs)), key=probs.__getitem__)],
                         "probs": probs, "num_classes": len(probs)})
        return {"object": "list", "data": data}

    return app


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m eval.bench.naive_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="a Hugging Face classifier directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    if not args.checkpoint.is_dir():
        raise UserError(f"--checkpoint {args.checkpoint} is not a Hugging Face model directory.")
    try:
        import uvicorn
    except ImportError:
        raise UserError('the naive server needs the serve extra: pip install -e ".[serve]"') from None
    uvicorn.run(create_app(args.checkpoint), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
