"""python -m npu_models.serve: real servers on 127.0.0.1 (each in a subprocess on a port of its own choosing),
driven over HTTP with bounded loops. A request's answer is the eval command's answer for the same input,
whatever it was batched with; bad input, overload and shutdown get the answers users of TEI and vLLM expect."""
import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from eval import imagenet, retrieval, sst2, vqa
from tests.conftest import BERT_FIXTURE, FIXTURES
from tests.imagenet_layout import make_flat_layout, synthetic_image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

REFERENCE = FIXTURES / "reference"
START_TIMEOUT = 120  # seconds for a server to load its model and warm up
SENTENCES = ["a charming and often affecting journey .", "dull", "the acting is wooden and the plot is a mess .",
             "unflinchingly bleak and desperate", "it 's a charming and often affecting journey . " * 3,
             "a gorgeous , witty , seductive movie .", "Too long .", "never finds its heart",
             "an affecting , charming film that never stops being funny , smart , and astounding .", "Bleak ."]


class RunningServer:
    """A server subprocess: its URL once it listens, its stderr, and a bounded wait for readiness."""

    def __init__(self, args: list[str], cwd: Path, launcher: tuple[str, ...] = ()):
        env = {k: v for k, v in os.environ.items() if k != "NPU_MODELS_DEBUG"}
        env["NPU_MODELS_DIST_TIMEOUT"] = "60"  # a rank left waiting fails the test within a minute
        python = [sys.executable, *launcher] if launcher else [sys.executable]
        self.process = subprocess.Popen([*python, "-m", "npu_models.serve", "--port", "0", "--device", "cpu", *args],
                                        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.url = None
        listening = threading.Event()

        def read_stderr():
            for line in self.process.stderr:
                self.lines.append(line)
                found = re.search(r"listening on (http://\S+)", line)
                if found:
                    self.url = found.group(1)
                    listening.set()
            listening.set()

        threading.Thread(target=read_stderr, daemon=True).start()
        listening.wait(START_TIMEOUT)
        assert self.url, "the server did not start listening:\n" + "".join(self.lines)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            status, _, _ = get(self.url + "/health")
            if status == 200:
                return
            assert self.process.poll() is None, "the server exited:\n" + "".join(self.lines)
            time.sleep(0.2)
        raise AssertionError("the server never became ready:\n" + "".join(self.lines))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def request(url: str, body=None, raw: bytes | None = None, timeout: float = 60) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one request; errors are answers too."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            payload = response.read()
            return response.status, dict(response.headers), json.loads(payload) if payload.startswith(b"{") else payload
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def get(url: str):
    try:
        return request(url, timeout=5)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}, {}


@pytest.fixture
def server(tmp_path):
    started = []

    def start(*args, ready=True):
        running = RunningServer(list(args), tmp_path)
        started.append(running)
        if ready:
            running.wait_ready()
        return running
    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="module")
def bert_server(tmp_path_factory):
    """One BERT fixture server for the tests that only send requests: batches of up to 8, 20 ms to fill them,
    bodies up to 4 KiB."""
    running = RunningServer(["--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--max-batch-size", "8",
                             "--max-wait-ms", "20", "--max-payload", "4096"], tmp_path_factory.mktemp("serve"))
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def image_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def png_b64(seed: int) -> str:
    buffer = io.BytesIO()
    synthetic_image(seed).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def sst2_file(tmp_path: Path) -> Path:
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(SENTENCES)))
    return dev


# ---- the same answers as the eval commands ---------------------------------------------------------------------


def test_bert_classify_answers_as_eval_sst2_whatever_the_batch(tmp_path, server):
    predictions = tmp_path / "sst2.jsonl"
    sst2.main(["--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--data", str(sst2_file(tmp_path)), "--device", "cpu",
               "--predictions", str(predictions), "--seq-len", "64"])
    expected = {r["sentence"]: r for r in map(json.loads, predictions.read_text().splitlines())}
    # The fixture's head leans to one class, but its probabilities move with every sentence (0.968 to 0.997): a
    # tokenisation or mask difference moves them by far more than the 1e-5 compared below.
    positive = [r["probs"][1] for r in expected.values()]
    assert max(positive) - min(positive) > 1e-2
    running = server("--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--max-wait-ms", "50")
    status, _, whole = request(running.url + "/classify", {"input": SENTENCES})
    assert status == 200 and whole["usage"]["prompt_tokens"] > len(SENTENCES)
    singles = [request(running.url + "/classify", {"input": s})[2]["data"][0] for s in SENTENCES]
    for sentence, batched, alone in zip(SENTENCES, whole["data"], singles):
        reference = expected[sentence]
        assert batched["label"] == alone["label"] == reference["prediction_label"]
        assert batched["probs"] == pytest.approx(reference["probs"], abs=1e-5)
        assert alone["probs"] == pytest.approx(reference["probs"], abs=1e-5)
    assert [d["index"] for d in whole["data"]] == list(range(len(SENTENCES)))


def test_vit_classify_answers_each_images_top5_as_eval_imagenet(tmp_path, server):
    images = tmp_path / "val"
    paths = make_flat_layout(images, [0, 1, 2, 3])
    predictions = tmp_path / "imagenet.jsonl"
    checkpoint = REFERENCE / "vit" / "checkpoint_timm.safetensors"
    imagenet.main(["--checkpoint", str(checkpoint), "--data", str(images), "--device", "cpu", "--num-workers", "0",
                   "--predictions", str(predictions)])
    expected = {r["file"]: r for r in map(json.loads, predictions.read_text().splitlines())}
    running = server("--model", "vit", "--checkpoint", str(checkpoint))
    status, _, body = request(running.url + "/classify", {"input": [{"image": image_b64(p)} for p in paths]})
    assert status == 200
    for path, answer in zip(paths, body["data"]):
        reference = expected[path.name]
        assert [t["class"] for t in answer["top5"]] == reference["top5"]
        assert answer["probs"] == pytest.approx(reference["top5_probs"], abs=1e-5)


def test_vlmo_vqa_answers_as_eval_vqa(tmp_path, server):
    data = REFERENCE / "vqa-vlmo"
    predictions = tmp_path / "vqa.jsonl"
    vqa.main(["--model", "vlmo", "--checkpoint", str(data / "vqa_checkpoint.pt"), "--data", str(data), "--device",
              "cpu", "--num-workers", "0", "--limit", "8", "--predictions", str(predictions)])
    expected = [json.loads(line) for line in predictions.read_text().splitlines()]
    questions = {q["question_id"]: q for q in json.loads(
        (data / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]}
    running = server("--model", "vlmo", "--checkpoint", str(data / "vqa_checkpoint.pt"))
    for record in expected:
        question = questions[record["question_id"]]
        image = data / "val2014" / f"COCO_val2014_{question['image_id']:012d}.jpg"
        status, _, body = request(running.url + "/vqa", {"image": image_b64(image), "question": question["question"],
                                                          "top_k": 3})
        assert status == 200 and len(body["answers"]) == 3
        assert (body["answers"][0]["answer"], body["answers"][0]["label"]) == (record["answer"], record["label"])
        assert body["answers"][0]["score"] >= body["answers"][1]["score"] >= body["answers"][2]["score"]


def embeddings(url: str, inputs: list, **options) -> list[list[float]]:
    status, _, body = request(url + "/v1/embeddings", {"input": inputs, **options})
    assert status == 200, body
    return [d["embedding"] for d in body["data"]]


def retrieval_embeddings(url: str, data: Path) -> tuple:
    """(the split, its image embeddings, its caption embeddings) from the server. Captions are cut as the eval
    cuts them ("truncate": true): BLIP's reference reads 35 tokens of a caption."""
    import torch
    split = retrieval.read_retrieval(data)
    texts = [e for start in range(0, len(split.texts), 20)
             for e in embeddings(url, split.texts[start:start + 20], truncate=True)]
    images = embeddings(url, [{"image": image_b64(p)} for p in split.image_paths])
    return split, torch.tensor(images), torch.tensor(texts)


def test_vlmo_embeddings_rank_as_eval_retrieval(tmp_path, server):
    from tests.test_eval_retrieval import write_dataset
    write_dataset(tmp_path, karpathy=False)
    predictions = tmp_path / "p.jsonl"
    retrieval.main(["--model", "vlmo", "--checkpoint", str(tmp_path / "retrieval.pt"), "--data", str(tmp_path),
                    "--device", "cpu", "--num-workers", "0", "--predictions", str(predictions)])
    records = {r["key"]: r for r in map(json.loads, predictions.read_text().splitlines())}
    running = server("--model", "vlmo", "--checkpoint", str(tmp_path / "retrieval.pt"), "--max-batch-size", "32")
    split, images, texts = retrieval_embeddings(running.url, tmp_path)
    assert images.norm(dim=1) == pytest.approx(1.0, abs=1e-5)  # normalised, one space for both
    sims = images @ texts.T
    for row in range(len(split.image_paths)):
        assert sims[row].topk(10).indices.tolist() == records[f"i2t:{row}"]["top10"]
    # /score is the same similarity, pair by pair
    status, _, scored = request(running.url + "/score", {"text_1": {"image": image_b64(split.image_paths[0])},
                                                         "text_2": split.texts[:5]})
    assert status == 200
    assert [d["score"] for d in scored["data"]] == pytest.approx(sims[0, :5].tolist(), abs=1e-5)
    # base64 embeddings are the float32 values themselves
    status, _, encoded = request(running.url + "/v1/embeddings", {"input": split.texts[0], "encoding_format": "base64"})
    values = list(memoryview(base64.b64decode(encoded["data"][0]["embedding"])).cast("f"))
    assert values == pytest.approx(texts[0].tolist(), abs=1e-6)


def test_blip_embeddings_and_itm_scores_as_eval_retrieval(tmp_path, server):
    import torch
    data = REFERENCE / "retrieval-blip"
    predictions = tmp_path / "p.jsonl"
    retrieval.main(["--model", "blip", "--checkpoint", str(data / "checkpoint.pth"), "--data", str(data), "--device",
                    "cpu", "--num-workers", "0", "--k-test", "4", "--predictions", str(predictions)])
    records = {r["key"]: r for r in map(json.loads, predictions.read_text().splitlines())}
    running = server("--model", "blip", "--checkpoint", str(data / "checkpoint.pth"))
    split, images, texts = retrieval_embeddings(running.url, data)
    sims = images @ texts.T
    for row in range(len(split.image_paths)):  # ITC picks the same candidates the eval re-ranked
        assert set(sims[row].topk(4).indices.tolist()) == set(records[f"i2t:{row}"]["indices"])
    # the ITM probability of a pair, against the production methods on the eval's preprocessing; their "match"
    # logit plus the ITC similarity is the score the eval recorded for the pair
    import npu_models
    from npu_models.transforms import preprocess
    row, record = 0, records["i2t:0"]
    candidates = record["indices"]
    status, _, scored = request(running.url + "/score", {"text_1": {"image": image_b64(split.image_paths[row])},
                                                         "text_2": [split.texts[c] for c in candidates],
                                                         "truncate": True})
    assert status == 200
    model = npu_models.load_model("blip", data / "checkpoint.pth", device="cpu")
    pixels = preprocess(split.image_paths[row], model.config.transform)[None]
    ids, masks = model.config.text_input.encode(data / "vocab.txt", [split.texts[c] for c in candidates])
    with torch.no_grad():
        features = model.image_features(pixels).expand(len(candidates), -1, -1)
        logits = model.itm_logits(features, ids, masks)
    assert [d["score"] for d in scored["data"]] == pytest.approx(logits.softmax(-1)[:, 1].tolist(), abs=1e-5)
    assert (logits[:, 1] + sims[row, candidates]).tolist() == pytest.approx(record["scores"], abs=1e-4)


# ---- many clients, overload, bad input, shutdown -------------------------------------------------------------


def test_sixteen_clients_get_their_own_answers_none_lost_none_swapped(bert_server):
    running = bert_server
    alone = {s: request(running.url + "/classify", {"input": s})[2]["data"][0]["probs"] for s in SENTENCES}
    work = [SENTENCES[(i * 7) % len(SENTENCES)] for i in range(64)]

    def ask(sentence):
        status, _, body = request(running.url + "/classify", {"input": sentence}, timeout=120)
        return sentence, status, body

    with ThreadPoolExecutor(16) as clients:
        answers = list(clients.map(ask, work, timeout=300))
    assert len(answers) == 64 and all(status == 200 for _, status, _ in answers)
    for sentence, _, body in answers:
        assert body["data"][0]["probs"] == pytest.approx(alone[sentence], abs=1e-5)
    _, _, metrics = request(running.url + "/metrics")
    text = metrics.decode()
    batches = re.search(r"te_batch_next_size_count (\S+)", text).group(1)
    assert float(batches) < 64 + len(SENTENCES) + 1  # some requests shared a batch
    assert 'te_request_count_total{endpoint="/classify",status="200"}' in text


def test_a_full_queue_answers_429_with_retry_after_and_health_stays_up(tmp_path, server):
    running = server("--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--max-queue", "4", "--max-wait-ms", "200",
                     "--max-batch-size", "2")
    health = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            health.append(get(running.url + "/health")[0])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(50) as clients:
            answers = list(clients.map(lambda i: request(running.url + "/classify", {"input": SENTENCES[i % 10]},
                                                         timeout=120), range(50), timeout=300))
    finally:
        stop.set()
        watcher.join(10)
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0 and statuses.count(200) >= 4
    refused = next(a for a in answers if a[0] == 429)
    assert refused[1].get("retry-after") == "1" or refused[1].get("Retry-After") == "1"
    assert refused[2]["error"]["type"] == "rate_limit_exceeded" and "--max-queue" in refused[2]["error"]["message"]
    assert health and set(health) == {200}


@pytest.mark.parametrize("endpoint, body, status, words", [
    ("/classify", b"{not json", 422, "not valid JSON"),
    ("/classify", {"inputs": "x"}, 422, "`input` is missing"),
    ("/classify", {"input": ""}, 422, "`input` is empty"),
    ("/classify", {"input": ["fine", "  "]}, 422, "`input[1]` is empty"),
    ("/classify", {"input": ["x"] * 9}, 422, "more than the 8 a request may hold"),
    ("/classify", {"input": "word " * 80}, 422, "`input` is longer than the 64 tokens"),
    ("/classify", {"input": 3}, 422, "`input` must be a string"),
    ("/classify", {"input": "fine", "truncate": "yes"}, 422, "`truncate` must be true or false"),
    ("/classify", {"input": "x" * 5000}, 413, "--max-payload"),
    ("/v1/embeddings", {"input": "x"}, 404, "serves /classify"),
])
def test_bad_input_gets_its_status_and_a_message_naming_the_field(bert_server, endpoint, body, status, words):
    running = bert_server
    raw = body if isinstance(body, bytes) else None
    answer_status, _, answer = request(running.url + endpoint, None if raw else body, raw=raw)
    assert answer_status == status, answer
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "code"}
    assert answer["error"]["code"] == status and words in answer["error"]["message"], answer
    # the same server still answers well-formed requests
    assert request(running.url + "/classify", {"input": "fine"})[0] == 200


def test_truncate_true_cuts_a_long_text_as_the_eval_commands_do(bert_server):
    running = bert_server
    status, _, body = request(running.url + "/classify", {"input": "word " * 80, "truncate": True})
    assert status == 200 and body["usage"]["prompt_tokens"] == 64


@pytest.mark.parametrize("image, words", [
    ("not base64!", "is not valid base64"),
    (base64.b64encode(b"these bytes are no image").decode(), "could not be decoded as an image"),
    ("data:image/png,abc", "data: URL without ;base64"),
])
def test_bad_images_are_refused_naming_the_field(server, image, words):
    running = server("--model", "vit", "--checkpoint", str(REFERENCE / "vit" / "checkpoint_timm.safetensors"))
    status, _, body = request(running.url + "/classify", {"input": [{"image": png_b64(1)}, {"image": image}]})
    assert status == 422 and "`input[1].image`" in body["error"]["message"] and words in body["error"]["message"]
    status, _, body = request(running.url + "/classify", {"input": {"image": "data:image/png;base64," + png_b64(2)}})
    assert status == 200 and len(body["data"][0]["top5"]) == 5


def test_sigterm_lets_in_flight_requests_finish_and_exits_0(server):
    running = server("--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--max-wait-ms", "300")
    with ThreadPoolExecutor(6) as clients:
        pending = [clients.submit(request, running.url + "/classify", {"input": s}, None, 60) for s in SENTENCES[:6]]
        time.sleep(0.1)  # admitted and waiting for their batch
        running.process.send_signal(signal.SIGTERM)
        answers = [future.result(timeout=120) for future in pending]
    assert [status for status, _, _ in answers] == [200] * 6
    assert running.process.wait(60) == 0


def test_health_is_503_until_the_model_is_ready(server):
    running = server("--checkpoint", str(BERT_FIXTURE / "checkpoint"), ready=False)
    statuses = []
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        status, _, body = get(running.url + "/health")
        statuses.append((status, body.get("status") if isinstance(body, dict) else None))
        if status == 200:
            break
        time.sleep(0.02)
    assert statuses[-1] == (200, "ready")
    assert all(s in ((503, "loading"), (503, "warming"), (0, None)) for s in statuses[:-1])
    _, _, models = request(running.url + "/v1/models")
    model = models["data"][0]
    assert model["quant"] == "none" and model["dtype"] == "float32" and model["devices"] == ["cpu"]
    assert model["limits"]["max_batch_size"] == 32 and model["endpoints"] == ["/classify"]


def test_two_replicas_answer_alike(server):
    running = server("--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--devices", "cpu,cpu")
    with ThreadPoolExecutor(8) as clients:
        answers = list(clients.map(lambda s: request(running.url + "/classify", {"input": s})[2]["data"][0]["probs"],
                                   SENTENCES * 2))
    for first, second in zip(answers[: len(SENTENCES)], answers[len(SENTENCES):]):
        assert first == pytest.approx(second, abs=1e-5)
    assert request(running.url + "/v1/models")[2]["data"][0]["devices"] == ["cpu", "cpu"]


def test_vilbert_without_detector_weights_is_refused_before_its_weights_are_read(monkeypatch):
    import npu_models
    from npu_models.errors import UserError
    from npu_models.serve.model import load_served
    monkeypatch.setattr(npu_models, "load_model", lambda *a, **k: pytest.fail("the model was read"))
    with pytest.raises(UserError, match="answers from detected regions: pass detector_weights="):
        load_served("vilbert", REFERENCE / "vqa-vilbert" / "model.tar.gz", "cpu")


def test_a_missing_checkpoint_is_refused_before_serving(tmp_path):
    done = subprocess.run([sys.executable, "-m", "npu_models.serve", "--checkpoint", str(tmp_path / "nope"),
                           "--vocab", str(tmp_path / "nope.txt"), "--port", "0"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "these paths do not exist: --checkpoint" in done.stderr
    assert "listening" not in done.stderr


def test_a_device_fault_fails_its_batch_with_500_and_health_says_so_until_a_batch_runs_again(tmp_path):
    """The device failing inside a batch (here: the model raising, as a lost device does) answers that batch's
    requests with 500; the server stays up, /health is 503 and says what happened, and the next good batch
    clears it. A real uvicorn server on 127.0.0.1, in this process so the fault can be switched on."""
    import uvicorn

    from npu_models.serve.app import Limits, ServeState, create_app
    from npu_models.serve.model import load_served

    failing = threading.Event()

    class LostDevice(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner = model
            self.config = model.config

        def forward(self, *args):
            if failing.is_set():
                raise RuntimeError("NPU function error: device lost (simulated)")
            return self.inner(*args)

    def load():
        served = load_served("bert", BERT_FIXTURE / "checkpoint", "cpu")
        served.model = LostDevice(served.model)
        return [served]

    state = ServeState(load, Limits(max_wait_ms=1), {"model": "bert"})
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (server.started and state.status == "ready") and time.monotonic() < deadline:
            time.sleep(0.05)
        url = "http://127.0.0.1:%d" % server.servers[0].sockets[0].getsockname()[1]
        assert request(url + "/classify", {"input": "fine"})[0] == 200
        failing.set()
        status, _, body = request(url + "/classify", {"input": ["fine", "dull"]})
        assert status == 500 and body["error"]["type"] == "server_error" and "device lost" in body["error"]["message"]
        status, _, health = request(url + "/health")
        assert status == 503 and health["status"] == "device_error" and "device lost" in health["detail"]
        failing.clear()
        assert request(url + "/classify", {"input": "fine"})[0] == 200
        assert request(url + "/health")[0] == 200
        _, _, metrics = request(url + "/metrics")
        assert "te_batch_failure_total 1.0" in metrics.decode()
    finally:
        server.should_exit = True
        thread.join(30)


def test_graph_mode_compiles_every_bucket_at_warm_up_and_never_on_a_request(tmp_path, server):
    """--graph: warm-up compiles one graph per length bucket at the one static batch size (compile_s > 0 once
    ready); requests of every length, alone or batched, then add no compile time, and answer as eager does."""
    eager = server("--checkpoint", str(BERT_FIXTURE / "checkpoint"))
    expected = request(eager.url + "/classify", {"input": SENTENCES})[2]["data"]
    running = server("--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--graph", "--max-batch-size", "4",
                     "--compile-cache", str(tmp_path / "cache"))
    warmed = request(running.url + "/v1/models")[2]["data"][0]
    assert warmed["graph"] is True and warmed["compile_s"] > 0 and warmed["graphs_compiled"] > 0
    answers = [request(running.url + "/classify", {"input": s})[2]["data"][0] for s in SENTENCES]
    answers += request(running.url + "/classify", {"input": SENTENCES[:4]})[2]["data"]
    assert request(running.url + "/v1/models")[2]["data"][0]["compile_s"] == warmed["compile_s"]
    for answer, reference in zip(answers, expected + expected[:4]):
        assert answer["probs"] == pytest.approx(reference["probs"], abs=1e-5)


def test_warm_up_loads_the_graphs_weights_tools_compile_made(tmp_path, server):
    """The server's warm-up goes through the same saved graphs as the eval commands: after `weights_tools.compile`
    with the server's batch size and length buckets, a server starts without compiling anything."""
    from npu_models import load_model
    from npu_models.runtime import length_buckets
    from weights_tools import compile as compile_tool
    buckets = length_buckets(load_model("bert", BERT_FIXTURE / "checkpoint", device="cpu").config.max_positions)
    compile_tool.compile_graphs("bert", BERT_FIXTURE / "checkpoint", "cpu", batch_sizes=[4], seq_lens=buckets,
                                out=tmp_path / "cache")
    running = server("--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--graph", "--max-batch-size", "4",
                     "--compile-cache", str(tmp_path / "cache"))
    warmed = request(running.url + "/v1/models")[2]["data"][0]
    assert (warmed["graphs_compiled"], warmed["graphs_loaded"]) == (0, len(buckets))


def documented_curl_commands() -> list[tuple[str, str]]:
    """(document, command) for every curl command of the README's and the serving page's bash blocks."""
    root = Path(__file__).resolve().parent.parent
    commands = []
    for path in (root / "README.md", root / "docs" / "serving.md"):
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#\s.*$", "", line.strip())
                for command in line.split("; "):
                    if command.startswith("curl "):
                        commands.append((path.name, command))
    return commands


def test_every_documented_curl_example_runs_against_a_real_server(tmp_path, server):
    """Each curl example of README.md and docs/serving.md, as written but aimed at a test server of the model its
    endpoint needs, gets an answer that is no error."""
    if shutil.which("curl") is None or shutil.which("base64") is None:
        pytest.skip("needs curl and base64")
    from tests.test_eval_retrieval import write_dataset
    synthetic_image(7).save(tmp_path / "cat.jpg")
    write_dataset(tmp_path / "coco", karpathy=False)
    vqa_data = REFERENCE / "vqa-vlmo"
    servers = {
        "text": lambda: server("--checkpoint", str(BERT_FIXTURE / "checkpoint")),
        "image": lambda: server("--model", "vit", "--checkpoint",
                                str(REFERENCE / "vit" / "checkpoint_timm.safetensors")),
        "retrieval": lambda: server("--model", "vlmo", "--checkpoint", str(tmp_path / "coco" / "retrieval.pt")),
        "vqa": lambda: server("--model", "vlmo", "--checkpoint", str(vqa_data / "vqa_checkpoint.pt")),
    }
    running = {}
    commands = documented_curl_commands()
    endpoints = {re.search(r"localhost:8000(/\S*)", command).group(1) for _, command in commands}
    assert {"/classify", "/v1/embeddings", "/score", "/vqa", "/health", "/v1/models", "/metrics"} <= endpoints
    for document, command in commands:
        endpoint = re.search(r"localhost:8000(/\S*)", command).group(1)
        kind = {"/v1/embeddings": "retrieval", "/score": "retrieval", "/vqa": "vqa"}.get(
            endpoint, "image" if endpoint == "/classify" and "image" in command else "text")
        if kind not in running:
            running[kind] = servers[kind]()
        aimed = command.replace("localhost:8000", running[kind].url.removeprefix("http://"))
        done = subprocess.run(["bash", "-c", aimed], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (document, command, done.stderr)
        if endpoint == "/metrics":
            assert "te_request_count_total" in done.stdout, (document, command)
        else:
            answer = json.loads(done.stdout)
            assert "error" not in answer, (document, command, answer)


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_load_generator_measures_ours_and_the_naive_peer_which_agree(tmp_path, server):
    """eval.bench.serve drives a closed loop against our server and against the naive peer (a transformers
    pipeline behind FastAPI, one request at a time) on the same checkpoint; both answer every request, and the two
    give the same probabilities (the peer is transformers itself)."""
    pytest.importorskip("transformers")
    from eval.bench import serve as load
    data = sst2_file(tmp_path)
    ours = server("--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--max-wait-ms", "20")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "NPU_MODELS_DEBUG"}
    naive = subprocess.Popen([sys.executable, "-m", "eval.bench.naive_server", "--checkpoint",
                              str(BERT_FIXTURE / "checkpoint"), "--port", str(port)], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        peer = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while get(peer + "/docs")[0] == 0 and time.monotonic() < deadline:
            assert naive.poll() is None, naive.stderr.read()
            time.sleep(0.2)
        for sentence in SENTENCES[:4]:
            mine = request(ours.url + "/classify", {"input": sentence})[2]["data"][0]
            theirs = request(peer + "/classify", {"input": sentence})[2]["data"][0]
            assert mine["label"] == theirs["label"] and mine["probs"] == pytest.approx(theirs["probs"], abs=1e-5)
        out = tmp_path / "ours.json"
        assert load.main(["--url", ours.url, "--data", str(data), "--concurrency", "4", "--requests", "12",
                          "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["ok"] == 12 and result["statuses"] == {"200": 12} and result["mean_batch_size"] >= 1
        assert result["latency_ms_p50"] <= result["latency_ms_p99"] and result["requests_per_second"] > 0
        assert load.main(["--url", peer, "--data", str(data), "--concurrency", "4", "--requests", "8",
                          "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["ok"] == 8 and result["mean_batch_size"] is None  # it has no /metrics to read batches from
    finally:
        naive.terminate()
        naive.wait(30)


def test_two_processes_under_torchrun_serve_one_model_split_with_the_answers_of_one(tmp_path, server):
    """--tp 2 under torchrun: rank 0 takes the requests, both ranks run every batch on their halves of the model
    (the all-reduces meet); the answers are one process's, alone and batched."""
    alone = server("--checkpoint", str(BERT_FIXTURE / "checkpoint"))
    expected = request(alone.url + "/classify", {"input": SENTENCES})[2]["data"]
    running = RunningServer(["--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--tp", "2", "--max-wait-ms", "20"],
                            tmp_path, launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    try:
        running.wait_ready()
        batched = request(running.url + "/classify", {"input": SENTENCES})[2]["data"]
        with ThreadPoolExecutor(4) as clients:
            singles = list(clients.map(lambda s: request(running.url + "/classify", {"input": s})[2]["data"][0],
                                       SENTENCES))
        for reference, one, many in zip(expected, singles, batched):
            assert one["probs"] == pytest.approx(reference["probs"], abs=1e-5)
            assert many["probs"] == pytest.approx(reference["probs"], abs=1e-5)
        assert request(running.url + "/v1/models")[2]["data"][0]["tp"] == 2
        assert "".join(running.lines).count("listening on") == 1  # rank 0 alone holds the HTTP side
    finally:
        running.stop()


def test_tp_without_torchrun_is_refused_with_the_launch_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "npu_models.serve", "--tp", "2", "--port", "0"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "--tp 2 needs 2 processes: run under torchrun" in done.stderr


def test_vilbert_answers_from_the_detector_run_on_each_image_as_eval_vqa(tmp_path, server):
    """ViLBERT's /vqa runs the detector on the request's image and answers from its regions: the answers of
    eval.vqa on the features eval's extractor cached for the same images (one image a batch)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from eval.data.region_features import extract_missing_features
    torch.manual_seed(0)
    detector = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).eval()
    with torch.no_grad():  # random class scores are ~1/91, under the 0.05 threshold: make some classes win
        detector.roi_heads.box_predictor.cls_score.weight.mul_(30)
    weights = tmp_path / "detector.pth"
    torch.save(detector.state_dict(), weights)
    data = tmp_path / "vqa"
    shutil.copytree(REFERENCE / "vqa-vilbert", data, ignore=shutil.ignore_patterns("features"))
    questions = json.loads((data / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"][:4]
    images = {}
    for question in questions:
        path = data / "val2014" / f"COCO_val2014_{question['image_id']:012d}.jpg"
        path.parent.mkdir(exist_ok=True)
        if path not in images.values():
            synthetic_image(question["image_id"]).save(path)
        images[question["question_id"]] = path
    assert extract_missing_features(sorted(set(images.values())), data / "features", weights, torch.device("cpu"),
                                    batch_size=1) == []
    predictions = tmp_path / "vqa.jsonl"
    vqa.main(["--model", "vilbert", "--checkpoint", str(data / "model.tar.gz"), "--data", str(data), "--device", "cpu",
              "--num-workers", "0", "--limit", "4", "--predictions", str(predictions)])
    expected = {r["question_id"]: r for r in map(json.loads, predictions.read_text().splitlines())}
    running = server("--model", "vilbert", "--checkpoint", str(data / "model.tar.gz"), "--vocab",
                     str(data / "vocab.txt"), "--detector-weights", str(weights))
    import npu_models
    from eval.data.region_features import RegionFeatureDataset, feature_path
    from npu_models import registry
    model = npu_models.load_model("vilbert", data / "model.tar.gz", device="cpu")
    model_task = registry.get_entry("vilbert").task
    for question in questions:
        status, _, body = request(running.url + "/vqa", {"image": image_b64(images[question["question_id"]]),
                                                          "question": question["question"], "top_k": 2})
        assert status == 200, body
        record = expected[question["question_id"]]
        assert (body["answers"][0]["answer"], body["answers"][0]["label"]) == (record["answer"], record["label"])
        # and the score itself: the answer head on the cached features, through the production methods
        _, (features, boxes, box_mask), _ = RegionFeatureDataset([feature_path(data / "features", images[
            question["question_id"]])])[0]
        ids, masks = model.config.text_input.encode(data / "vocab.txt", [question["question"]])
        with torch.no_grad():
            logits = model_task.answer_logits(model, features[None], boxes[None], box_mask[None], ids, masks)[0]
        top = logits.topk(2)
        assert [a["label"] for a in body["answers"]] == top.indices.tolist()
        assert [a["score"] for a in body["answers"]] == pytest.approx(top.values.sigmoid().tolist(), abs=1e-5)
