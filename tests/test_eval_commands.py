"""eval.commands: each eval command run on a ready model (as weights_tools.quantize calibrates through it) gives
what the command gives loading the same checkpoint itself; `limit` takes exactly the first N examples (for
retrieval the first N images); results and the predictions' run record name the model's quantization scheme."""
import json

import pytest
import torch
from safetensors.torch import load_file

import npu_models
from eval import sst2
from eval.commands import EVAL_COMMANDS, run_eval_command
from eval.data.imagenet import read_imagenet
from eval.data.sst2 import read_sst2
from eval.data.vqa import read_vqa
from npu_models import registry, runtime
from npu_models.errors import UserError
from npu_models.quantization import calibrate, quantize_model, scheme_of
from tests.conftest import BERT_FIXTURE, FIXTURES
from tests.imagenet_layout import make_flat_layout
from tests.test_eval_retrieval import write_dataset

VQA_VLMO = FIXTURES / "reference" / "vqa-vlmo"
SENTENCES = json.loads((BERT_FIXTURE / "inputs.json").read_text())["sentences"] + [
    "A tour de force .", "the film is long , and it feels longer .", "Bleak .", "never finds its heart"]
# what the timing of a run adds to its results: differs between two runs of the same work
TIMING = {"samples_per_second", "latency_ms_p50", "latency_ms_p90", "time_to_first_batch_s", "compile_s"}


def sst2_setup(tmp_path):
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(SENTENCES)))
    options = {"checkpoint": BERT_FIXTURE / "checkpoint", "data": data, "batch_size": 4}
    return "bert", options, [e.index for e in read_sst2(data)]


def imagenet_setup(tmp_path):
    make_flat_layout(tmp_path / "val", [3, 1, 4, 1, 5, 9, 2])
    options = {"checkpoint": FIXTURES / "reference" / "vit" / "checkpoint_timm.safetensors", "data": tmp_path / "val",
               "batch_size": 4, "num_workers": 0}
    return "vit", options, [e.file for e in read_imagenet(tmp_path / "val")]


def vqa_setup(tmp_path):
    options = {"checkpoint": VQA_VLMO / "vqa_checkpoint.pt", "data": VQA_VLMO, "batch_size": 8, "num_workers": 0}
    return "vlmo", options, [e.question_id for e in read_vqa(VQA_VLMO, "val2014")]


def retrieval_setup(tmp_path):
    write_dataset(tmp_path, karpathy=False)  # 3 images, 5 captions each
    options = {"checkpoint": tmp_path / "retrieval.pt", "data": tmp_path, "batch_size": 2, "num_workers": 0}
    return "vlmo", options, [f"i2t:{i}" for i in range(3)]


SETUPS = {"sst2": sst2_setup, "imagenet": imagenet_setup, "vqa": vqa_setup, "retrieval": retrieval_setup}


def test_the_table_holds_every_task_of_the_registry():
    assert set(EVAL_COMMANDS) == {entry.task.name for entry in registry.REGISTRY.values()}
    with pytest.raises(UserError, match="no eval command for task 'ocr'; the commands are sst2, imagenet"):
        run_eval_command("ocr")


def load(name, options, task):
    return npu_models.load_model(name, options["checkpoint"], device="cpu", task=task)


def predictions_of(path, key: str) -> dict:
    return {r[key]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("task", SETUPS)
def test_a_ready_model_gives_what_the_command_gives_loading_the_checkpoint(tmp_path, task):
    name, options, _ = SETUPS[task](tmp_path)
    command = EVAL_COMMANDS[task]
    loaded = command.evaluate(command.options(model=name, device="cpu", predictions=tmp_path / "loaded.jsonl",
                                              **options))
    ready = run_eval_command(task, load(name, options, task), model_name=name, predictions=tmp_path / "ready.jsonl",
                             **options)
    assert {k: v for k, v in ready.items() if k not in TIMING} == {k: v for k, v in loaded.items() if k not in TIMING}
    key = command.options.prediction_key
    assert predictions_of(tmp_path / "ready.jsonl", key) == predictions_of(tmp_path / "loaded.jsonl", key)
    assert ready["quant"] == loaded["quant"] == "none"


@pytest.mark.parametrize("task", SETUPS)
def test_limit_takes_the_first_n_examples_and_results_name_the_scheme(tmp_path, task):
    """A w8a16 ready model (no calibration needed) on the first 2 examples of each command's data."""
    name, options, keys = SETUPS[task](tmp_path)
    model = runtime.prepare_model(quantize_model(load(name, options, task), "w8a16"), torch.device("cpu"),
                                  torch.float32)
    predictions = tmp_path / "p.jsonl"
    results = run_eval_command(task, model, model_name=name, limit=2, predictions=predictions, **options)
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    key = EVAL_COMMANDS[task].options.prediction_key
    if task == "retrieval":  # the first 2 images, their 10 captions: a query record each
        assert (results["num_images"], results["num_texts"]) == (2, 10)
        assert sorted(r[key] for r in records) == sorted(keys[:2] + [f"t2i:{t}" for t in range(10)])
    else:
        assert sorted(r[key] for r in records) == sorted(keys[:2]) and results["num_computed"] == 2
    assert results["quant"] == "w8a16"
    assert json.loads((tmp_path / "p.jsonl.run.json").read_text())["quant"] == "w8a16"


def calibrated_bert(scheme: str):
    """The fixture BERT quantized with `scheme`, w8a8 calibrated on the fixture's inputs."""
    model = npu_models.load_model("bert", BERT_FIXTURE / "checkpoint", device="cpu")
    inputs = load_file(str(BERT_FIXTURE / "inputs.safetensors"))
    batch = (inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    quantize_model(model, scheme, calibrate(model, [batch]))
    return runtime.prepare_model(model, torch.device("cpu"), torch.float32)


def test_a_quantized_model_is_named_in_results_and_its_predictions_refuse_a_float_resume(tmp_path, capsys):
    _, options, _ = sst2_setup(tmp_path)
    predictions = tmp_path / "p.jsonl"
    quantized = calibrated_bert("w8a8")
    results = sst2.evaluate(sst2.SST2Options(device="cpu", predictions=predictions, **options), quantized)
    assert results["quant"] == "w8a8" and results["num_computed"] == len(SENTENCES)
    # a graph-mode model shows its original's attributes: the scheme is read without compiling anything
    assert scheme_of(runtime.compile_model(quantized, torch.device("cpu"))) == "w8a8"
    float_options = sst2.SST2Options(device="cpu", predictions=predictions, **options)
    with pytest.raises(UserError, match="quant: 'w8a8' then, 'none' now"):
        sst2.evaluate(float_options)
    assert sst2.evaluate(sst2.SST2Options(device="cpu", **options))["quant"] == "none"


@pytest.mark.parametrize("task, name, given, message", [
    ("vqa", "vlmo", "retrieval", "eval.vqa was given vlmo-base-coco-retrieval, a retrieval model, while options.model "
                                 "names vlmo-base-vqa; vqa runs vlmo-base-vqa, vilbert-vqa"),
    ("sst2", "bert", "vit", "eval.sst2 was given a ViT, while options.model names bert-base-cased-sst2"),
])
def test_a_ready_model_of_another_kind_is_refused(tmp_path, task, name, given, message):
    _, options, _ = SETUPS[task](tmp_path)
    other = {"retrieval": ("vlmo", FIXTURES / "reference" / "vlmo" / "retrieval_checkpoint.pt"),
             "vit": ("vit", FIXTURES / "reference" / "vit" / "checkpoint_timm.safetensors")}[given]
    model = npu_models.load_model(*other, device="cpu")
    with pytest.raises(UserError, match=message):
        run_eval_command(task, model, model_name=name, **options)
