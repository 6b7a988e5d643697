import json
import subprocess
import sys

import pytest
import torch

import npu_models
from eval import sst2
from eval.batching import plan_batches
from eval.store import PredictionStore
from tests.conftest import BERT_FIXTURE
from tests.test_bert import tiny_config

transformers = pytest.importorskip("transformers")

CHECKPOINT = BERT_FIXTURE / "checkpoint"
SENTENCES = json.loads((BERT_FIXTURE / "inputs.json").read_text())["sentences"] + [
    "A tour de force .", "the film is long , and it feels longer .", "Bleak .", "Hollywood never made a funnier film .",
    "It 's a charming and often affecting journey , though the acting , costumes , music , cinematography and "
    "sound are all astounding given the production 's austere locales and the script is a dull , overrated mess .",
    "smart , sharp and surprisingly moving", "never finds its heart", "the acting is astounding", "dull",
    "an affecting , charming film that never stops being funny , smart , and astounding .", "Too long .",
]


@pytest.fixture
def dev_tsv(tmp_path):
    path = tmp_path / "SST-2" / "dev.tsv"
    path.parent.mkdir()
    labels = [i % 2 for i in range(len(SENTENCES))]
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in zip(SENTENCES, labels)))
    return path


def transformers_probs(seq_len: int, checkpoint=CHECKPOINT) -> torch.Tensor:
    """The reference: transformers' tokenizer (cased, as the checkpoint says) and model, per sentence."""
    tokenizer = transformers.BertTokenizer(str(checkpoint / "vocab.txt"), do_lower_case=False)
    model = transformers.BertForSequenceClassification.from_pretrained(checkpoint).eval()
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.softmax(-1)


def transformers_predictions(seq_len: int) -> list[int]:
    return transformers_probs(seq_len).argmax(-1).tolist()


@pytest.fixture
def split_checkpoint(tmp_path):
    """The fixture checkpoint with its classifier bias moved so that half the sentences come out positive:
    a model that predicts one class for everything cannot show a tokenisation or mask bug."""
    import shutil
    model = transformers.BertForSequenceClassification.from_pretrained(CHECKPOINT).eval()
    margins = transformers_probs(64).log().diff(dim=-1).flatten()
    with torch.no_grad():
        model.classifier.bias[1] -= margins.median() + 1e-4
    directory = tmp_path / "split-checkpoint"
    model.save_pretrained(directory)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(CHECKPOINT / name, directory / name)
    return directory


def test_per_sentence_probabilities_equal_transformers_on_a_model_whose_predictions_vary(tmp_path, dev_tsv,
                                                                                       split_checkpoint):
    expected = transformers_probs(64, split_checkpoint)
    assert 0 < int(expected.argmax(-1).sum()) < len(SENTENCES)  # both classes are predicted
    predictions = tmp_path / "p.jsonl"
    sst2.main(["--checkpoint", str(split_checkpoint), "--data", str(dev_tsv), "--device", "cpu", "--batch-size", "4",
               "--seq-len", "64", "--predictions", str(predictions)])
    records = sorted((json.loads(line) for line in predictions.read_text().splitlines()), key=lambda r: r["index"])
    torch.testing.assert_close(torch.tensor([r["probs"] for r in records]), expected, atol=1e-5, rtol=1e-4)
    assert [r["prediction"] for r in records] == expected.argmax(-1).tolist()


@pytest.mark.parametrize("seq_len", [128, 12])  # 128 is capped at the fixture's 64 positions; 12 truncates
def test_accuracy_and_predictions_equal_transformers(tmp_path, dev_tsv, seq_len):
    expected = transformers_predictions(min(seq_len, 64))
    out = tmp_path / "results.json"
    predictions = tmp_path / "predictions.jsonl"
    sst2.main(["--checkpoint", str(CHECKPOINT), "--data", str(dev_tsv.parent), "--device", "cpu", "--batch-size", "4",
               "--seq-len", str(seq_len), "--output", str(out), "--predictions", str(predictions)])
    results = json.loads(out.read_text())
    labels = [i % 2 for i in range(len(SENTENCES))]
    assert results["accuracy"] == sum(p == y for p, y in zip(expected, labels)) / len(labels)
    assert results["num_examples"] == len(SENTENCES) and results["seq_len"] == min(seq_len, 64)
    assert results["dtype"] == "fp32" and results["device"].startswith("cpu")
    assert results["samples_per_second"] > 0
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(len(SENTENCES)))
    assert [r["prediction"] for r in sorted(records, key=lambda r: r["index"])] == expected


def test_interrupted_run_resumes_without_recomputing(tmp_path, dev_tsv, monkeypatch):
    predictions = tmp_path / "predictions.jsonl"
    args = ["--checkpoint", str(CHECKPOINT), "--data", str(dev_tsv), "--device", "cpu", "--batch-size", "3",
            "--predictions", str(predictions)]
    sst2.main(args + ["--output", str(tmp_path / "full.json")])
    full = json.loads((tmp_path / "full.json").read_text())
    lines = predictions.read_text().splitlines(keepends=True)
    # An interruption: five finished lines and a sixth cut off mid-write.
    predictions.write_text("".join(lines[:5]) + lines[5][:17])

    rows_seen = []
    real_load = npu_models.load_model

    def counting_load(*a, **k):
        model = real_load(*a, **k)
        model.register_forward_pre_hook(lambda module, inputs: rows_seen.append(inputs[0].shape[0]))
        return model

    monkeypatch.setattr(npu_models, "load_model", counting_load)
    sst2.main(args + ["--output", str(tmp_path / "resumed.json")])
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert sum(rows_seen) == len(SENTENCES) - 5
    assert resumed["num_computed"] == len(SENTENCES) - 5
    assert resumed["accuracy"] == full["accuracy"]
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(len(SENTENCES)))


def test_predictions_from_another_dataset_are_refused(tmp_path, dev_tsv, capsys):
    predictions = tmp_path / "p.jsonl"
    args = ["--checkpoint", str(CHECKPOINT), "--data", str(dev_tsv), "--device", "cpu", "--predictions", str(predictions)]
    sst2.main(args + ["--limit", "2"])
    first = json.loads(predictions.read_text().splitlines()[0])
    predictions.write_text(json.dumps({**first, "sentence": "something else"}) + "\n")
    with pytest.raises(SystemExit) as info:
        sst2.main(args)
    assert info.value.code == 2
    assert "written for another dataset" in capsys.readouterr().err


def test_predictions_of_another_run_are_refused_and_more_data_extends_them(tmp_path, dev_tsv, capsys):
    predictions = tmp_path / "p.jsonl"
    args = ["--checkpoint", str(CHECKPOINT), "--data", str(dev_tsv), "--device", "cpu", "--predictions", str(predictions)]
    sst2.main(args + ["--limit", "3", "--output", str(tmp_path / "a.json")])
    for other, difference in [(["--dtype", "bf16"], "dtype: 'fp32' then, 'bf16' now"),
                              (["--seq-len", "32"], "seq_len: 64 then, 32 now")]:
        with pytest.raises(SystemExit) as info:
            sst2.main(args + other)
        assert info.value.code == 2 and difference in capsys.readouterr().err
    converted = tmp_path / "converted"
    from weights_tools.convert import main as convert_main
    convert_main(["--model", "bert", "--checkpoint", str(CHECKPOINT), "--out", str(converted)])
    with pytest.raises(SystemExit):
        sst2.main(args[:1] + [str(converted)] + args[2:])
    assert "checkpoint:" in capsys.readouterr().err
    sst2.main(args + ["--output", str(tmp_path / "b.json")])  # the same run over all the data resumes
    assert json.loads((tmp_path / "b.json").read_text())["num_computed"] == 16 - 3
    predictions.with_name("p.jsonl.run.json").unlink()
    with pytest.raises(SystemExit):
        sst2.main(args)
    assert "no record of the run" in capsys.readouterr().err


def test_graph_mode_gives_the_eager_predictions(tmp_path, dev_tsv, compiled_graphs):
    results, compile_s = {}, {}
    for mode in ("eager", "graph"):
        out = tmp_path / f"{mode}.jsonl"
        sst2.main(["--checkpoint", str(CHECKPOINT), "--data", str(dev_tsv), "--device", "cpu", "--batch-size", "8",
                   "--seq-len", "32", "--predictions", str(out), "--output", str(tmp_path / f"{mode}.json"),
                   "--compile-cache", str(tmp_path / "cache")] + (["--graph"] if mode == "graph" else []))
        results[mode] = {r["index"]: r for r in map(json.loads, out.read_text().splitlines())}
        compile_s[mode] = json.loads((tmp_path / f"{mode}.json").read_text())["compile_s"]
    assert compile_s["eager"] == 0 and compile_s["graph"] > 0  # beside time_to_first_batch_s in every results JSON
    for index, eager in results["eager"].items():
        assert results["graph"][index]["prediction"] == eager["prediction"]
        assert results["graph"][index]["probs"] == pytest.approx(eager["probs"], abs=1e-5)
    assert compiled_graphs() == (2, 0)  # one graph per length bucket the sentences use (16 and 32 tokens)


def test_demo_run_says_loudly_that_weights_are_random(capsys, monkeypatch):
    monkeypatch.setattr(sst2, "evaluate", lambda args: (sst2.demo_banner("x"), {})[1])
    sst2.main([])
    assert "RANDOM" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["--data", "/nonexistent/dev.tsv"], "--data /nonexistent/dev.tsv does not exist"),
    (["--model", "bret"], "unknown model 'bret'"),
    (["--device", "npu:0"], "needs the Ascend PyTorch adapter torch_npu"),
    (["--checkpoint", "/nonexistent/ckpt"], "--checkpoint /nonexistent/ckpt does not exist"),
    (["--checkpoint", "/nonexistent/ckpt", "--data", "/nonexistent/dev.tsv", "--vocab", "/nonexistent/vocab.txt"],
     "these paths do not exist: --checkpoint /nonexistent/ckpt; --data /nonexistent/dev.tsv; "
     "--vocab /nonexistent/vocab.txt."),
])
def test_bad_input_gives_one_paragraph_and_no_traceback(argv, expected):
    result = subprocess.run([sys.executable, "-m", "eval.sst2", *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_checkpoint_is_named(tmp_path, capsys):
    (tmp_path / "config.json").write_text((CHECKPOINT / "config.json").read_text())
    (tmp_path / "vocab.txt").write_text((CHECKPOINT / "vocab.txt").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes((CHECKPOINT / "pytorch_model.bin").read_bytes()[:5000])
    with pytest.raises(SystemExit):
        sst2.main(["--checkpoint", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert f"{tmp_path / 'pytorch_model.bin'} is not a readable checkpoint" in err and "corrupt" in err


def test_malformed_tsv_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "dev.tsv"
    bad.write_text("sentence\tlabel\ngood one\t1\nbad one\tpositive\n")
    with pytest.raises(SystemExit):
        sst2.main(["--data", str(bad), "--checkpoint", str(CHECKPOINT), "--device", "cpu"])
    assert f"{bad}:3: label 'positive' is not 0 or 1" in capsys.readouterr().err


def test_batches_are_sorted_by_length_and_bucketed():
    lengths = [5, 40, 3, 17, 16, 2, 33]
    batches = plan_batches(lengths, batch_size=3, buckets=[16, 32, 64])
    assert batches == [([5, 2, 0], 16), ([4, 3, 6], 64), ([1], 64)]


def test_prediction_store_drops_a_cut_off_last_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"index": 0, "p": 1}\n{"index": 1, "p": 0}\n{"index": 2, "p"')
    store = PredictionStore(path)
    assert sorted(store.done) == [0, 1]
    store.add([{"index": 2, "p": 1}])
    store.close()
    assert [json.loads(line)["index"] for line in path.read_text().splitlines()] == [0, 1, 2]


def test_batches_are_cut_to_their_longest_and_an_unpadded_batch_gets_no_mask(tmp_path):
    """Sentences sorted by length: three of 5 tokens make one batch without padding (no attention mask),
    the 7- and 8-token ones the next, cut to 8 tokens with a mask; the classifier sees no other shape."""
    vocab = (sst2.SAMPLE / "vocab.txt").read_text().split()
    words = [w for w in vocab if w.isalpha() and w.islower()][:6]  # one WordPiece each
    sentences = [" ".join(words[:n - 2]) for n in (8, 5, 5, 7, 5)]
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\n" + "".join(f"{s}\t1\n" for s in sentences))
    with pytest.warns(npu_models.RandomWeightsWarning):
        model = npu_models.load_model("bert", device="cpu", config=tiny_config(vocab_size=len(vocab)))
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, ids, mask, types):
            seen.append((ids.shape[1], None if mask is None else mask.sum(dim=1).tolist()))
            return self.inner(ids, mask, types)

    results = sst2.evaluate(sst2.parse_args(["--data", str(dev), "--batch-size", "3", "--device", "cpu"]), Spy())
    assert seen == [(5, None), (8, [7, 8])]
    assert results["token_rows"] == 3 * 5 + 2 * 8


def test_the_library_takes_typed_options_and_the_command_line_only_parses_into_them(tmp_path, dev_tsv):
    assert sst2.parse_args([]) == sst2.SST2Options()  # the dataclass holds the only defaults
    assert sst2.parse_args(["--seq-len", "64", "--graph"]) == sst2.SST2Options(seq_len=64, graph=True)
    options = sst2.SST2Options(checkpoint=str(CHECKPOINT), data=str(dev_tsv), device="cpu", batch_size=4)
    assert (options.model, options.checkpoint) == ("bert-base-cased-sst2", CHECKPOINT)  # paths given as strings
    results = sst2.evaluate(options)
    sst2.main(["--checkpoint", str(CHECKPOINT), "--data", str(dev_tsv), "--device", "cpu", "--batch-size", "4",
               "--output", str(tmp_path / "cli.json")])
    cli = json.loads((tmp_path / "cli.json").read_text())
    assert {k: results[k] for k in ("accuracy", "num_examples", "token_rows", "seq_len")} == {
        k: cli[k] for k in ("accuracy", "num_examples", "token_rows", "seq_len")}
