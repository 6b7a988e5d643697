"""Bad input ends in one paragraph and exit 2, never a traceback; what is visible up front is refused
before any data is read or model is built."""
import json
import warnings

import pytest
import torch

import npu_models
from eval import imagenet, retrieval, sst2, vqa
from tests.conftest import FIXTURES

COMMANDS = {"sst2": sst2, "imagenet": imagenet, "vqa": vqa, "retrieval": retrieval}


def run(capsys, command: str, argv: list[str], device: str = "cpu") -> str:
    with pytest.raises(SystemExit) as exit_info:
        COMMANDS[command].main(argv + ["--device", device])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model is built: these faults must be found before that."""
    monkeypatch.setattr(npu_models, "load_model", lambda *a, **k: pytest.fail("a model was built"))


@pytest.mark.parametrize("command, argv, message", [
    ("vqa", ["--model", "bert"], "bert-base-cased-sst2 is a model for sst2, not vqa; the vqa evaluation runs vlmo-base-vqa, vilbert-vqa"),
    ("retrieval", ["--model", "vit"], "is a model for imagenet, not retrieval; the retrieval evaluation runs"),
    ("imagenet", ["--model", "bert"], "is a model for sst2, not imagenet; the imagenet evaluation runs vit-base-patch32-224"),
    ("sst2", ["--limit", "0"], "--limit: must be at least 1, got 0"),
    ("sst2", ["--limit", "-1"], "--limit: must be at least 1, got -1"),
    ("vqa", ["--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
])
def test_arguments_are_checked_before_any_work(capsys, no_model, command, argv, message):
    assert message in run(capsys, command, argv)


@pytest.mark.parametrize("option", ["--output", "--predictions"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unwritable_result_path_is_refused_before_the_work(tmp_path, capsys, no_model, command, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = run(capsys, command, [option, str(blocker / "results.json")])
    assert f"{option} {blocker / 'results.json'} cannot be written" in err


def test_a_predictions_file_of_another_command_is_named(tmp_path, capsys, no_model):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"question_id": 1, "answer": "yes"}) + "\n")
    err = run(capsys, "sst2", ["--predictions", str(predictions)])
    assert "line 1 has no 'index': it is not a predictions file of eval.sst2" in err


def test_malformed_sst2_and_retrieval_files_name_the_place(tmp_path, capsys):
    tsv = tmp_path / "dev.tsv"
    tsv.write_bytes(b"sentence\tlabel\ngood\t1\ncaf\xe9\t0\n")
    assert f"{tsv}:3: not UTF-8 text" in run(capsys, "sst2", ["--data", str(tsv)])
    data = tmp_path / "coco"
    data.mkdir()
    (data / "coco_karpathy_test.json").write_text(json.dumps([{"image": "val2014/a.jpg", "caption": ["x"]},
                                                             {"image": "val2014/b.jpg"}]))
    err = run(capsys, "retrieval", ["--data", str(data), "--vocab", str(FIXTURES / "reference" / "vqa-vlmo" / "vocab.txt")])
    assert "coco_karpathy_test.json: entry 1 has no 'caption'" in err


@pytest.mark.parametrize("damage, message", [
    (lambda q, a: q["questions"][2].pop("image_id"), "v2_OpenEnded_mscoco_val2014_questions.json: question 2 has no 'image_id'"),
    (lambda q, a: a["annotations"][1].pop("question_id"), "v2_mscoco_val2014_annotations.json: annotation 1 has no 'question_id'"),
    (lambda q, a: a.pop("annotations"), "v2_mscoco_val2014_annotations.json: the file has no 'annotations'"),
])
def test_a_damaged_vqa_file_names_the_entry(tmp_path, capsys, damage, message):
    import shutil
    data = tmp_path / "vqa"
    shutil.copytree(FIXTURES / "reference" / "vqa-vlmo", data)
    questions_path, annotations_path = (data / "v2_OpenEnded_mscoco_val2014_questions.json",
                                        data / "v2_mscoco_val2014_annotations.json")
    questions, annotations = json.loads(questions_path.read_text()), json.loads(annotations_path.read_text())
    damage(questions, annotations)
    questions_path.write_text(json.dumps(questions))
    annotations_path.write_text(json.dumps(annotations))
    err = run(capsys, "vqa", ["--checkpoint", str(data / "vqa_checkpoint.pt"), "--data", str(data), "--num-workers", "0"])
    assert message in err


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("device, message", [
    ("cuda", "device 'cuda' was asked for but no cuda device is visible; check the driver installation or choose "
             "--device cpu."),
    ("npu", "device 'npu' needs the Ascend PyTorch adapter torch_npu"),
])
def test_a_device_this_machine_lacks_is_refused_before_the_banner(capsys, no_model, no_accelerators, command, device,
                                                                   message):
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        err = run(capsys, command, [], device=device)
    assert message in err
    assert "DEMO RUN" not in err and not [w for w in warned if issubclass(w.category, npu_models.RandomWeightsWarning)]


def test_a_device_index_past_the_count_is_refused_before_the_banner(monkeypatch, capsys, no_model):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    err = run(capsys, "sst2", [], device="cuda:3")
    assert "device 'cuda:3' does not exist: 2 cuda device(s) are visible (indices 0..1)" in err
    assert "DEMO RUN" not in err


def test_a_dtype_that_is_not_one_is_refused_before_the_banner(capsys, no_model):
    err = run(capsys, "sst2", ["--dtype", "fp8"])
    assert "unknown dtype 'fp8'" in err and "DEMO RUN" not in err


def vocab_cases(tmp_path):
    """command -> (argv running a small reference model on its data, the vocab.txt that model was made with, the
    rows of the model's word-embedding table)."""
    from tests.test_eval_retrieval import write_dataset
    reference = FIXTURES / "reference"
    write_dataset(tmp_path / "coco", karpathy=False)
    return {
        "sst2 bert": (["--checkpoint", str(reference / "bert" / "checkpoint")],
                      reference / "bert" / "checkpoint" / "vocab.txt", 170),
        "vqa vlmo": (["--model", "vlmo", "--checkpoint", str(reference / "vqa-vlmo" / "vqa_checkpoint.pt"), "--data",
                      str(reference / "vqa-vlmo")], reference / "vqa-vlmo" / "vocab.txt", 128),
        "vqa vilbert": (["--model", "vilbert", "--checkpoint", str(reference / "vqa-vilbert" / "model.tar.gz"),
                         "--data", str(reference / "vqa-vilbert")], reference / "vqa-vilbert" / "vocab.txt", 120),
        "retrieval vlmo": (["--model", "vlmo", "--checkpoint", str(tmp_path / "coco" / "retrieval.pt"), "--data",
                            str(tmp_path / "coco")], tmp_path / "coco" / "vocab.txt", 128),
        "retrieval blip": (["--model", "blip", "--checkpoint", str(reference / "retrieval-blip" / "checkpoint.pth"),
                            "--data", str(reference / "retrieval-blip")], reference / "retrieval-blip" / "vocab.txt", 120),
    }


@pytest.mark.parametrize("case", ["sst2 bert", "vqa vlmo", "vqa vilbert", "retrieval vlmo", "retrieval blip"])
def test_a_vocab_longer_than_the_embedding_table_is_refused_before_any_work(tmp_path, capsys, case):
    """A vocab.txt with more entries than the model has embeddings (e.g. another model's) would end in an
    IndexError once a sentence holds one of the extra tokens: it is refused in one paragraph before the run."""
    argv, vocab, rows = vocab_cases(tmp_path)[case]
    longer = tmp_path / "longer_vocab.txt"
    entries = vocab.read_text(encoding="utf-8").splitlines() + [f"extra{i}" for i in range(rows + 7 - 1)]
    longer.write_text("\n".join(entries[:rows + 7]) + "\n", encoding="utf-8")
    predictions = tmp_path / "p.jsonl"
    err = run(capsys, case.split()[0], argv + ["--vocab", str(longer), "--predictions", str(predictions)])
    assert f"vocabulary {longer} has {rows + 7} entries, but the model's word-embedding table has {rows} rows" in err
    assert "--vocab" in err and not predictions.exists()  # refused before a single prediction
    # the model's own vocabulary runs (the check refuses only what does not fit)
    assert len(vocab.read_text(encoding="utf-8").splitlines()) <= rows
