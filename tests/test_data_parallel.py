"""Data parallelism: two gloo processes under torchrun, each evaluating every other batch, give the results
and the predictions file of one process; an interrupted two-process run resumes to the same results."""
import json
import os
import subprocess
import sys

import pytest

from eval import imagenet, retrieval, sst2, vqa
from npu_models import parallel
from tests.conftest import BERT_FIXTURE, FIXTURES
from tests.imagenet_layout import make_flat_layout
from tests.test_eval_retrieval import write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT_CHECKPOINT = FIXTURES / "reference" / "vit" / "checkpoint_timm.safetensors"
VQA_FIXTURE = FIXTURES / "reference" / "vqa-vlmo"
RETRIEVAL_BLIP = FIXTURES / "reference" / "retrieval-blip"
# What differs between runs that computed the same predictions: timing, how many were computed, the machine.
RUN_FIELDS = {"samples_per_second", "latency_ms_p50", "latency_ms_p90", "num_computed", "token_rows", "device", "date",
              "time_to_first_batch_s"}


def torchrun(module: str, args: list[str], succeed: bool = True) -> str:
    """Rank 0's stdout of a run that succeeds; both ranks' output of one that must fail."""
    env = {**os.environ, "NPU_MODELS_DIST_TIMEOUT": "60"}  # a rank left waiting fails the test within a minute
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", module, *args], capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert (result.returncode == 0) == succeed, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout if succeed else result.stdout + result.stderr


def outcome(path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in RUN_FIELDS}


def interrupt(predictions, keep: int) -> None:
    """What an interruption leaves: `keep` finished lines and the next one cut off mid-write."""
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text("".join(lines[:keep]) + lines[keep][:10])


def records(predictions) -> list[dict]:
    return [json.loads(line) for line in predictions.read_text().splitlines()]


def same_predictions(found: list[dict], expected: list[dict], probabilities: str) -> None:
    """The same records in the same order; probabilities agree to float rounding (torchrun gives each process
    one thread, and a resumed example may be batched with others: both change the kernels' summation order)."""
    assert [{k: v for k, v in r.items() if k != probabilities} for r in found] == [
        {k: v for k, v in r.items() if k != probabilities} for r in expected]
    for a, b in zip(found, expected):
        assert a[probabilities] == pytest.approx(b[probabilities], abs=1e-5)  # ITM scores reach ~2


def test_data_parallel_ranks_take_every_other_batch_and_gather_in_rank_order():
    batches = [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    ranks = [parallel.DataParallel(rank, 2) for rank in range(2)]
    assert [dp.share(batches) for dp in ranks] == [[[0, 1], [4, 5], [8]], [[2, 3], [6, 7]]]
    assert ranks[0].steps(len(batches)) == 3
    assert parallel.DataParallel(0, 1).gather("x") == ["x"]


def test_imagenet_with_two_processes_equals_one_and_resumes(tmp_path):
    images = tmp_path / "val"
    make_flat_layout(images, [i % 10 for i in range(9)])
    # Batches of 2: [0 1] [2 3] [4 5] [6 7] [8]; rank 1 runs [2 3] and [6 7], so it has one batch fewer, one
    # unreadable image beside a good one and a batch with no readable image at all.
    for number in (3, 7, 8):
        (images / f"ILSVRC2012_val_{number:08d}.JPEG").write_bytes(b"not a jpeg")
    args = ["--checkpoint", str(VIT_CHECKPOINT), "--data", str(images), "--device", "cpu", "--batch-size", "2",
            "--num-workers", "0"]
    imagenet.main(args + ["--output", str(tmp_path / "one.json"), "--predictions", str(tmp_path / "one.jsonl")])
    stdout = torchrun("eval.imagenet", args + ["--output", str(tmp_path / "two.json"),
                                               "--predictions", str(tmp_path / "two.jsonl")])
    assert stdout.count("top1") == 1  # rank 0 alone prints
    one, two = outcome(tmp_path / "one.json"), outcome(tmp_path / "two.json")
    assert one == two
    assert (two["num_examples"], two["num_unreadable"]) == (6, 3)
    assert [u["file"] for u in two["unreadable"]] == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in (3, 7, 8)]
    same_predictions(records(tmp_path / "two.jsonl"), records(tmp_path / "one.jsonl"), "top5_probs")
    full = json.loads((tmp_path / "two.json").read_text())
    assert full["num_computed"] == 6 and full["samples_per_second"] > 0  # both ranks' samples

    interrupt(tmp_path / "two.jsonl", keep=2)
    torchrun("eval.imagenet", args + ["--output", str(tmp_path / "resumed.json"),
                                      "--predictions", str(tmp_path / "two.jsonl")])
    assert outcome(tmp_path / "resumed.json") == one
    assert json.loads((tmp_path / "resumed.json").read_text())["num_computed"] == 4
    same_predictions(records(tmp_path / "two.jsonl"), records(tmp_path / "one.jsonl"), "top5_probs")


def test_sst2_with_two_processes_equals_one_and_resumes(tmp_path):
    sentences = json.loads((BERT_FIXTURE / "inputs.json").read_text())["sentences"] + [
        "A tour de force .", "the film is long , and it feels longer .", "Bleak .", "never finds its heart",
        "Hollywood never made a funnier film .", "smart , sharp and surprisingly moving", "dull", "Too long .",
        "an affecting , charming film that never stops being funny , smart , and astounding ."]
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(sentences)))
    args = ["--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--data", str(dev), "--device", "cpu",
            "--batch-size", "3"]  # 14 sentences: 5 batches, rank 1 has one fewer
    sst2.main(args + ["--output", str(tmp_path / "one.json"), "--predictions", str(tmp_path / "one.jsonl")])
    torchrun("eval.sst2", args + ["--output", str(tmp_path / "two.json"), "--predictions", str(tmp_path / "two.jsonl")])
    one = outcome(tmp_path / "one.json")
    assert outcome(tmp_path / "two.json") == one and one["num_examples"] == len(sentences)
    same_predictions(records(tmp_path / "two.jsonl"), records(tmp_path / "one.jsonl"), "probs")

    interrupt(tmp_path / "two.jsonl", keep=4)
    torchrun("eval.sst2", args + ["--output", str(tmp_path / "resumed.json"),
                                  "--predictions", str(tmp_path / "two.jsonl")])
    assert outcome(tmp_path / "resumed.json") == one
    assert json.loads((tmp_path / "resumed.json").read_text())["num_computed"] == len(sentences) - 4
    # The resumed examples are batched anew (sorted by length), so the lines follow in another order.
    resumed = sorted(records(tmp_path / "two.jsonl"), key=lambda r: r["index"])
    same_predictions(resumed, sorted(records(tmp_path / "one.jsonl"), key=lambda r: r["index"]), "probs")


def test_vqa_with_two_processes_reproduces_the_reference_and_resumes(tmp_path):
    args = ["--model", "vlmo", "--checkpoint", str(VQA_FIXTURE / "vqa_checkpoint.pt"), "--data", str(VQA_FIXTURE),
            "--device", "cpu", "--num-workers", "0", "--batch-size", "5"]  # 28 questions: 6 batches, 3 per rank
    predictions = tmp_path / "two.jsonl"
    torchrun("eval.vqa", args + ["--output", str(tmp_path / "two.json"), "--predictions", str(predictions)])
    results, expected = json.loads((tmp_path / "two.json").read_text()), json.loads((VQA_FIXTURE / "expected.json").read_text())
    assert (results["vqa_accuracy"], results["vqa_score"], results["num_examples"]) == (
        expected["vqa_accuracy"], expected["vqa_score"], expected["num_examples"])
    full = records(predictions)
    assert {str(r["question_id"]): r["answer"] for r in full} == expected["predictions"]
    vqa.main(args + ["--output", str(tmp_path / "one.json"), "--predictions", str(tmp_path / "one.jsonl")])
    assert predictions.read_text() == (tmp_path / "one.jsonl").read_text()

    interrupt(predictions, keep=7)
    torchrun("eval.vqa", args + ["--output", str(tmp_path / "resumed.json"), "--predictions", str(predictions)])
    assert outcome(tmp_path / "resumed.json") == outcome(tmp_path / "two.json")
    assert [r["question_id"] for r in records(predictions)] == [r["question_id"] for r in full]


def top1(predictions, direction: str, num_rows: int) -> list[int]:
    """Each query's best re-ranked candidate, as the reference's expected.json lists them."""
    by_key = {r["key"]: r for r in records(predictions)}
    rows = [by_key[f"{direction}:{row}"] for row in range(num_rows)]
    return [r["indices"][max(range(len(r["scores"])), key=r["scores"].__getitem__)] for r in rows]


def test_blip_retrieval_with_two_processes_reproduces_the_reference_and_resumes(tmp_path):
    args = ["--model", "blip", "--checkpoint", str(RETRIEVAL_BLIP / "checkpoint.pth"), "--vocab",
            str(RETRIEVAL_BLIP / "vocab.txt"), "--data", str(RETRIEVAL_BLIP), "--k-test", "4", "--device", "cpu",
            "--num-workers", "0", "--batch-size", "8"]  # 10 images, 50 captions, re-ranking chunks of 2 queries
    predictions = tmp_path / "two.jsonl"
    stdout = torchrun("eval.retrieval", args + ["--output", str(tmp_path / "two.json"),
                                                "--predictions", str(predictions)])
    assert stdout.count("num_images") == 1  # rank 0 alone prints
    results = json.loads((tmp_path / "two.json").read_text())
    expected = json.loads((RETRIEVAL_BLIP / "expected.json").read_text())
    for key in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "txt_r_mean", "img_r_mean", "r_mean"):
        assert results[key] == pytest.approx(expected[key] / 100, abs=1e-12), key  # the reference prints percent
    assert (results["num_images"], results["num_texts"], results["k_test"]) == (10, 50, 4)
    assert results["samples_per_second"] > 0
    assert (top1(predictions, "i2t", 10), top1(predictions, "t2i", 50)) == (expected["i2t_top1"], expected["t2i_top1"])

    retrieval.main(args + ["--output", str(tmp_path / "one.json"), "--predictions", str(tmp_path / "one.jsonl")])
    assert outcome(tmp_path / "two.json") == outcome(tmp_path / "one.json")
    full = records(predictions)
    same_predictions(full, records(tmp_path / "one.jsonl"), "scores")

    interrupt(predictions, keep=25)  # all 10 image queries and 15 of the 50 caption queries
    torchrun("eval.retrieval", args + ["--output", str(tmp_path / "resumed.json"), "--predictions", str(predictions)])
    assert outcome(tmp_path / "resumed.json") == outcome(tmp_path / "two.json")
    resumed = records(predictions)
    assert resumed[:25] == full[:25]
    same_predictions(resumed, full, "scores")


def test_vlmo_retrieval_with_two_processes_equals_one_and_resumes(tmp_path):
    write_dataset(tmp_path, karpathy=False)
    # Batches of 2: 3 images (rank 1 has one batch fewer) and 15 captions (8 batches).
    args = ["--model", "vlmo", "--checkpoint", str(tmp_path / "retrieval.pt"), "--data", str(tmp_path), "--device",
            "cpu", "--batch-size", "2", "--num-workers", "0"]
    predictions = tmp_path / "two.jsonl"
    retrieval.main(args + ["--output", str(tmp_path / "one.json"), "--predictions", str(tmp_path / "one.jsonl")])
    torchrun("eval.retrieval", args + ["--output", str(tmp_path / "two.json"), "--predictions", str(predictions)])
    assert outcome(tmp_path / "two.json") == outcome(tmp_path / "one.json")
    full = predictions.read_text()
    assert full == (tmp_path / "one.jsonl").read_text()  # each query's top 10, rank 0 alone writing
    assert [r["key"] for r in records(predictions)] == [f"i2t:{i}" for i in range(3)] + [f"t2i:{t}" for t in range(15)]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["samples_per_second"] > 0 and (two["num_images"], two["num_texts"]) == (3, 15)

    interrupt(predictions, keep=5)
    torchrun("eval.retrieval", args + ["--output", str(tmp_path / "resumed.json"), "--predictions", str(predictions)])
    assert outcome(tmp_path / "resumed.json") == outcome(tmp_path / "two.json")
    assert predictions.read_text() == full

    # Rank 1 embeds image 2 alone: when it cannot be read, both ranks stop with the reason (none is left waiting).
    (tmp_path / "val2014" / "COCO_val2014_000000000002.jpg").unlink()
    output = torchrun("eval.retrieval", args, succeed=False)
    assert output.count("COCO_val2014_000000000002.jpg cannot be read") == 1  # rank 0 alone prints it


def test_every_rank_meets_the_same_warnings_and_errors_and_rank_0_alone_prints_them(tmp_path):
    """Random weights (the demo banner), then an error after the model is built: a predictions file without the
    record of the run that wrote it."""
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"index": 0, "prediction": 1}) + "\n")
    output = torchrun("eval.sst2", ["--device", "cpu", "--limit", "2", "--predictions", str(predictions)],
                      succeed=False)
    assert output.count("DEMO RUN") == 1
    assert output.count("has RANDOM weights") == 0  # the banner says so; no warning repeats it
    assert output.count(f"{predictions} holds 1 predictions but no record of the run") == 1
    assert output.count("error: ") == 1


def test_a_rank_that_outlives_rank_0s_time_to_report_prints_its_own_error(monkeypatch, capsys):
    """An error rank 0 did not meet (it did not end the job) is printed by the rank that met it."""
    monkeypatch.setenv("RANK", "1")
    waited = []
    monkeypatch.setattr(parallel.time, "sleep", waited.append)
    with pytest.raises(SystemExit) as info:
        sst2.main(["--device", "cpu", "--dtype", "fp8"])
    assert info.value.code == 2 and waited == [parallel.ERROR_GRACE_SECONDS]
    assert capsys.readouterr().err.startswith("rank 1: error: unknown dtype 'fp8'")


def test_a_world_size_without_torchrun_says_how_to_launch(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(SystemExit) as info:
        sst2.main(["--device", "cpu"])
    assert info.value.code == 2 and "run under torchrun --standalone --nproc_per_node 2" in capsys.readouterr().err


def test_a_note_prints_once_for_the_job_not_once_per_rank(tmp_path):
    """The fixture's BERT has 64 positions: --seq-len 128 is capped, and the job says so once."""
    env = {**os.environ, "NPU_MODELS_DIST_TIMEOUT": "60"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "eval.sst2", "--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--device", "cpu",
                             "--limit", "4", "--seq-len", "128"], capture_output=True, text=True, timeout=240, cwd=tmp_path,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("note: --seq-len 128 capped at the model's 64 positions") == 1, result.stderr
