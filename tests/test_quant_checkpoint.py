"""Quantized checkpoints in msModelSlim's W8A8 layout: ours written and read back exactly, the layout as
vLLM-Ascend declares it, directories msModelSlim itself writes (official names, q/k/v apart, the float bias
inside quant_bias, deq_scale as int64), shards of quantized checkpoints, and bad files refused before work."""
import copy
import inspect
import io
import json
import shutil
import tarfile

import pytest
import torch
from safetensors.torch import load_file, save_file

import npu_models
from npu_kernels.quant_matmul import pack_deq_scale, unpack_deq_scale
from npu_models import parallel, registry, runtime
from npu_models.checkpoints import quantized
from npu_models.errors import UserError
from npu_models.layers.quant import QuantLinear
from npu_models.quantization import calibrate, quantize_model
from npu_models.verify import QUANT_TOLERANCE, find_checkpoints
from tests.conftest import FIXTURES
from tests.npu_standin import NPU0
from weights_tools.shard import shard

REFERENCE = FIXTURES / "reference"
FAMILIES = ["bert", "vit", "blip", "vlmo", "vilbert"]
CPU = torch.device("cpu")


def fixture(family: str):
    """(spec, first checkpoint, the inputs its outputs take) of a family's reference fixture."""
    directory = REFERENCE / family
    entry = registry.get_entry(family)
    accepted = inspect.signature(entry.outputs).parameters
    inputs = {k: v for k, v in load_file(str(directory / "inputs.safetensors")).items() if k in accepted}
    return entry, find_checkpoints(directory)[0], inputs


def outputs(entry, model, inputs) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {k: v.float() for k, v in entry.outputs(model, **inputs).items()}


def quantized_fixture(family: str, scheme: str = "w8a8", skip=()):
    """The fixture's float model quantized in memory (w8a8 calibrated on the fixture's inputs), its spec and inputs."""
    entry, checkpoint, inputs = fixture(family)
    model = registry.build_model(entry, checkpoint)
    entry = registry.entry_for_config(entry, model.config)
    calibration = calibrate(model, [inputs], forward=lambda m, b: entry.outputs(m, **b), skip=skip)
    quantize_model(model, scheme, calibration if scheme == "w8a8" else None, skip=skip)
    return entry, checkpoint, inputs, model


def save(tmp_path, entry, checkpoint, model, dtype=torch.float32, name="quantized"):
    out = tmp_path / name
    quantized.save_quantized(out, entry.name, model.config, [model], dtype, registry.assets_beside(entry, checkpoint))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_quantized_model_loads_back_exactly(tmp_path, family):
    entry, checkpoint, inputs, model = quantized_fixture(family)
    out = save(tmp_path, entry, checkpoint, model)
    loaded = npu_models.load_model(out, device="cpu", dtype="fp32")
    assert loaded.quant_scheme == "w8a8" and sum(isinstance(m, QuantLinear) for m in loaded.modules()) == sum(
        isinstance(m, QuantLinear) for m in model.modules())
    # the state itself, not only this machine's outputs: every tensor, the w8a8 biases rebuilt from quant_bias too
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert set(state) == set(loaded_state)
    changed = [key for key, tensor in state.items() if not torch.equal(loaded_state[key], tensor)]
    assert changed == []
    expected = outputs(entry, runtime.prepare_model(model, CPU, torch.float32), inputs)
    found = outputs(entry, loaded, inputs)
    for key, tensor in expected.items():
        assert torch.equal(found[key], tensor), key


@pytest.mark.parametrize("scheme", ["w8a8-dynamic", "w8a16"])
def test_every_scheme_loads_back_exactly(tmp_path, scheme):
    entry, checkpoint, inputs, model = quantized_fixture("bert", scheme)
    loaded = npu_models.load_model(save(tmp_path, entry, checkpoint, model), device="cpu", dtype="fp32")
    assert loaded.quant_scheme == scheme
    expected = outputs(entry, runtime.prepare_model(model, CPU, torch.float32), inputs)
    assert all(torch.equal(outputs(entry, loaded, inputs)[k], v) for k, v in expected.items())


def test_the_files_hold_the_layout_vllm_ascend_declares(tmp_path):
    """W8A8 for an fp16 model: weight int8 [N, K], weight_scale/weight_offset [N, 1] fp16, input_scale [1] fp16,
    input_offset [1] int8, quant_bias int32 [N], deq_scale int64 [N] (npu_trans_quant_param's form)."""
    entry, checkpoint, _, model = quantized_fixture("bert")
    out = save(tmp_path, entry, checkpoint, model, torch.float16)
    state = load_file(str(out / "model.safetensors"))
    description = json.loads((out / quantized.DESCRIPTION_FILE).read_text())
    assert json.loads((out / "config.json").read_text())["quant"] == {"scheme": "w8a8", "dtype": "float16"}
    assert description["model_quant_type"] == "W8A8" and set(description) - {"model_quant_type"} == set(state)
    layer = model.blocks[0].mlp.fc1
    prefix = "blocks.0.mlp.fc1"
    n, k = layer.weight.shape
    expected = {"weight": (torch.int8, [n, k]), "weight_scale": (torch.float16, [n, 1]),
                "weight_offset": (torch.float16, [n, 1]), "input_scale": (torch.float16, [1]),
                "input_offset": (torch.int8, [1]), "quant_bias": (torch.int32, [n]), "deq_scale": (torch.int64, [n])}
    for name, (dtype, shape) in expected.items():
        tensor = state[f"{prefix}.{name}"]
        assert (tensor.dtype, list(tensor.shape)) == (dtype, shape), name
        assert description[f"{prefix}.{name}"] == "W8A8"
    assert f"{prefix}.bias" not in state  # w8a8 adds its bias inside quant_bias
    assert description["embeddings.norm.weight"] == "FLOAT" and state["embeddings.norm.weight"].dtype == torch.float16
    assert not state[f"{prefix}.weight_offset"].count_nonzero()
    deq_scale = state[f"{prefix}.deq_scale"]
    assert ((deq_scale >> 46) & 1).all()  # the flag bit npu_trans_quant_param sets
    product = (layer.input_scale.float() * layer.weight_scale.float())
    assert torch.allclose(unpack_deq_scale(deq_scale), product, rtol=2 ** -10, atol=0)
    offset_correction = layer.input_offset.long() * layer.weight.long().sum(dim=1)
    rebuilt_bias = (state[f"{prefix}.quant_bias"].long() + offset_correction).double() * product.double()
    assert torch.allclose(rebuilt_bias.float(), layer.bias.float(), atol=product.max().item())


def test_bf16_files_hold_deq_scale_in_fp32_and_other_schemes_a_float_bias(tmp_path):
    entry, checkpoint, _, model = quantized_fixture("bert")
    state = load_file(str(save(tmp_path, entry, checkpoint, model, torch.bfloat16) / "model.safetensors"))
    assert state["blocks.0.mlp.fc1.deq_scale"].dtype == torch.float32
    entry, checkpoint, _, model = quantized_fixture("bert", "w8a16")
    state = load_file(str(save(tmp_path, entry, checkpoint, model, torch.float16, "w8a16") / "model.safetensors"))
    assert {k.rpartition(".")[2] for k in state if k.startswith("blocks.0.mlp.fc1.")} == {
        "weight", "weight_scale", "weight_offset", "bias"}


# ---- directories msModelSlim writes ---------------------------------------------------------------------------


def modelslim_layer(weight: torch.Tensor, bias: torch.Tensor | None, low: float, high: float) -> dict:
    """One Linear as msModelSlim exports W8A8 for an fp16 model, by its formulas (not ours): per-channel absmax
    scales in fp32, the activation range on [-128, 127], deq_scale packed to int64, the bias in quant_bias."""
    weight_scale = weight.abs().amax(dim=1) / 127
    q = torch.round(weight / weight_scale[:, None]).clamp(-127, 127).to(torch.int8)
    input_scale = torch.tensor([(high - low) / 255])
    input_offset = torch.round(-128 - low / input_scale).to(torch.int8)
    deq_scale = input_scale * weight_scale
    bias = torch.zeros(weight.shape[0]) if bias is None else bias
    quant_bias = torch.round(bias / deq_scale) - input_offset.float() * q.float().sum(dim=1)
    return {"weight": q, "weight_scale": weight_scale[:, None].half(), "weight_offset": torch.zeros(len(q), 1).half(),
            "input_scale": input_scale.half(), "input_offset": input_offset, "quant_bias": quant_bias.to(torch.int32),
            "deq_scale": pack_deq_scale(deq_scale)}


def write_modelslim(directory, official: dict, ranges: dict[str, tuple[float, float]], copy_files=()):
    """A directory as msModelSlim leaves it: the official state dict with each Linear named in `ranges`
    (official module names) quantized, quant_model_weight_w8a8.safetensors, quant_model_description.json and
    the float model's other files."""
    directory.mkdir()
    state, description = {}, {"model_quant_type": "W8A8", "version": "1.0.0"}
    for key, tensor in official.items():
        module, _, param = key.rpartition(".")
        if module in ranges and param in ("weight", "bias"):
            continue
        state[key], description[key] = tensor.half() if tensor.is_floating_point() else tensor, "FLOAT"
    for module, (low, high) in ranges.items():
        layer = modelslim_layer(official[f"{module}.weight"].float(), official.get(f"{module}.bias"), low, high)
        for name, tensor in layer.items():
            state[f"{module}.{name}"], description[f"{module}.{name}"] = tensor, "W8A8"
    save_file(state, str(directory / "quant_model_weight_w8a8.safetensors"))
    (directory / quantized.DESCRIPTION_FILE).write_text(json.dumps(description))
    for path in copy_files:
        shutil.copyfile(path, directory / path.name)
    return directory


def bert_modelslim(tmp_path):
    """The BERT fixture through msModelSlim: q, k and v quantized apart under their official names, each with
    the input range our calibration measured for the fused projection (the same input)."""
    entry, checkpoint, inputs = fixture("bert")
    model = registry.build_model(entry, checkpoint)
    ranges = calibrate(model, [inputs], forward=lambda m, b: entry.outputs(m, **b))
    official = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    prefix = "bert." if any(k.startswith("bert.") for k in official) else ""
    names = {"attn.proj": ["attention.output.dense"], "mlp.fc1": ["intermediate.dense"], "mlp.fc2": ["output.dense"],
             "attn.qkv": [f"attention.self.{part}" for part in ("query", "key", "value")]}
    official_ranges = {}
    for path, range_ in ranges.items():
        _, block, rest = path.split(".", 2)
        for name in names[rest]:
            official_ranges[f"{prefix}encoder.layer.{block}.{name}"] = range_
    directory = write_modelslim(tmp_path / "bert-w8a8", official, official_ranges,
                                [checkpoint / n for n in ("config.json", "vocab.txt", "tokenizer_config.json")])
    return entry, directory, official_ranges, inputs, model


def test_a_directory_msmodelslim_wrote_loads_with_q_k_v_fused(tmp_path):
    entry, directory, official_ranges, inputs, float_model = bert_modelslim(tmp_path)
    model = npu_models.load_model("bert", directory, device="cpu", dtype="fp32")
    assert model.quant_scheme == "w8a8"
    file = load_file(str(directory / "quant_model_weight_w8a8.safetensors"))
    parts = [f"encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")]
    prefix = next(p.removesuffix("encoder.layer.0.attention.self.query") for p in official_ranges if p.endswith(parts[0]))
    qkv = model.blocks[0].attn.qkv
    assert torch.equal(qkv.weight, torch.cat([file[f"{prefix}{p}.weight"] for p in parts]))
    # quant_bias as the kernels derive it from what was read is msModelSlim's, row for row
    assert torch.equal(qkv.quant_bias, torch.cat([file[f"{prefix}{p}.quant_bias"] for p in parts]))
    assert torch.equal(model.blocks[1].mlp.fc2.quant_bias, file[f"{prefix}encoder.layer.1.output.dense.quant_bias"])
    expected = outputs(entry, runtime.prepare_model(float_model, CPU, torch.float32), inputs)
    found = outputs(entry, model, inputs)
    for key in ("logits", "last_hidden_state"):
        relative = (found[key] - expected[key]).abs().max() / expected[key].abs().max()
        assert relative < QUANT_TOLERANCE["w8a8"], (key, relative)


def test_msmodelslims_separate_q_and_v_biases_fold_into_the_projection(tmp_path):
    """VLMo's qkv Linear has no bias of its own (q_bias and v_bias stay FLOAT beside it): its quant_bias holds
    only the offset's correction, and the loader folds the float biases in, as quantize_model does."""
    entry, checkpoint, inputs = fixture("vlmo")
    float_model = registry.build_model(entry, checkpoint)
    entry = registry.entry_for_config(entry, float_model.config)
    qkv_only = [f"blocks.{i}.attn.proj" for i in range(len(float_model.blocks))] + ["*mlp*", "*.fc*"]
    ranges = calibrate(float_model, [inputs], forward=lambda m, b: entry.outputs(m, **b), skip=qkv_only)
    official = torch.load(checkpoint, weights_only=True)
    official = official.get("state_dict", official)
    directory = write_modelslim(tmp_path / "vlmo-w8a8", official, {f"transformer.{p}": r for p, r in ranges.items()},
                                [checkpoint.parent / "config.json"])
    model = npu_models.load_model(entry.name, directory, device="cpu", dtype="fp32")
    assert not hasattr(model.blocks[0].attn, "q_bias") and isinstance(model.blocks[0].attn.qkv, QuantLinear)
    ours = copy.deepcopy(float_model)
    quantize_model(ours, "w8a8", ranges, skip=qkv_only)
    expected = outputs(entry, runtime.prepare_model(ours, CPU, torch.float32), inputs)
    found = outputs(entry, model, inputs)
    reference = outputs(entry, runtime.prepare_model(float_model, CPU, torch.float32), inputs)
    key = "irtr.similarity" if "irtr.similarity" in found else next(iter(found))
    scale = reference[key].abs().max()
    # msModelSlim's scales and ours round differently: both quantizations sit as close to float as each other
    assert (found[key] - reference[key]).abs().max() / scale < 2 * (expected[key] - reference[key]).abs().max() / scale + 1e-3
    assert (found[key] - expected[key]).abs().max() / scale < QUANT_TOLERANCE["w8a8"]


def test_an_extracted_vilbert_archive_msmodelslim_quantized_loads(tmp_path):
    """ViLBERT's checkpoint is an AllenNLP archive: msModelSlim's output is an extracted copy (config.json,
    vocabulary/) with the quantized weights file in place of weights.th. The text stream's q/k/v and MLPs are
    quantized; the answer list comes from vocabulary/answers.txt."""
    entry, checkpoint, inputs = fixture("vilbert")
    float_model = registry.build_model(entry, checkpoint)
    ranges = calibrate(float_model, [inputs], forward=lambda m, b: entry.outputs(m, **b))
    keep = [p for p in ranges if p.startswith("text_layers.") and p.endswith(("attn.qkv", "mlp.fc1"))]
    assert len(keep) >= 4
    official = {}
    for path in keep:
        _, i, rest = path.split(".", 2)
        parts = ["query", "key", "value"] if rest == "attn.qkv" else ["intermediate"]
        names = [f"attention.self.{p}" for p in parts] if rest == "attn.qkv" else ["intermediate.dense"]
        official.update({f"backbone.encoder.layers1.{i}.{n}": ranges[path] for n in names})
    with tarfile.open(checkpoint) as archive:
        weights = torch.load(io.BytesIO(archive.extractfile("weights.th").read()), weights_only=True)
        directory = write_modelslim(tmp_path / "vilbert-w8a8", weights, official, [checkpoint.parent / "text_model_config.json"])
        (directory / "config.json").write_bytes(archive.extractfile("config.json").read())
        (directory / "vocabulary").mkdir()
        (directory / "vocabulary" / "answers.txt").write_bytes(archive.extractfile("vocabulary/answers.txt").read())
    model = npu_models.load_model("vilbert", directory, device="cpu", dtype="fp32")
    assert sorted(p for p, m in model.named_modules() if isinstance(m, QuantLinear)) == sorted(keep)
    assert entry.task.answers_in_checkpoint(directory) == entry.task.answers_in_checkpoint(checkpoint)
    ours = copy.deepcopy(float_model)
    quantize_model(ours, "w8a8", {p: ranges[p] for p in keep})
    expected = outputs(entry, runtime.prepare_model(ours, CPU, torch.float32), inputs)
    found = outputs(entry, model, inputs)
    for key in ("logits", "encoded_text_final"):
        relative = (found[key] - expected[key]).abs().max() / expected[key].abs().max()
        assert relative < QUANT_TOLERANCE["w8a8"] / 4, (key, relative)


def test_verify_judges_a_quantized_checkpoint_by_its_schemes_bound(tmp_path):
    from npu_models.verify import verify
    entry, checkpoint, _, model = quantized_fixture("bert")
    directory = tmp_path / "fixture"
    directory.mkdir()
    for name in ("inputs.safetensors", "outputs.safetensors"):
        shutil.copyfile(REFERENCE / "bert" / name, directory / name)
    save(tmp_path, entry, checkpoint, model, torch.float16, "fixture/bert-w8a8")
    rows = verify("bert", directory)
    assert rows and all(r["ok"] for r in rows) and all("relative_diff" in r for r in rows)
    assert max(r["relative_diff"] for r in rows) > 1e-3  # int8, not the float model: a float bound would fail it
    with pytest.raises(UserError, match="quantized already"):
        verify("bert", directory, quant="w8a8")


# ---- shards -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "vlmo"])
def test_shards_of_a_quantized_checkpoint_are_the_plan_applied_to_it(tmp_path, family):
    entry, checkpoint, _, model = quantized_fixture(family)
    whole = save(tmp_path, entry, checkpoint, model)
    out = shard(entry.name, whole, 2, tmp_path / "shards")
    assert json.loads((out / "config.json").read_text())["quant"]["scheme"] == "w8a8"
    full = registry.build_model(entry, whole)
    for rank in range(2):
        tp = parallel.TensorParallel(rank, 2)
        expected = parallel.apply_plan(copy.deepcopy(full), entry.tp_plan, tp)
        found = registry.build_model(entry, out, tp=tp)
        on_the_fly = registry.build_model(entry, whole, tp=tp)  # the whole directory serves --tp too: cut here
        for model in (found, on_the_fly):
            assert sorted(model.state_dict()) == sorted(expected.state_dict())
            for key, tensor in expected.state_dict().items():
                assert torch.equal(model.state_dict()[key], tensor), (rank, key)
        for module in (expected, found):  # the constants the kernels derive (quant_bias per part) agree too
            runtime.prepare_model(module, CPU, torch.float32)
        for (path, a), (_, b) in zip(expected.named_modules(), found.named_modules()):
            if isinstance(a, QuantLinear):
                assert torch.equal(a.quant_bias, b.quant_bias), (rank, path)


@pytest.mark.parametrize("family", ["bert", "vlmo"])
def test_a_row_parallel_shard_stores_only_its_columns_offset_correction_in_quant_bias(tmp_path, family):
    """The tensors in each rank's file, as any reader of msModelSlim's layout takes them: a row-parallel part's
    quant_bias is -input_offset * rowsum(its int8 columns) and nothing else, and the bias is a float `bias` (added
    once, after the all-reduce). Were the bias folded into every rank's quant_bias, such a reader would add it once
    per rank; our loader, which prefers the float bias, would not notice."""
    entry, checkpoint, _, model = quantized_fixture(family)
    whole = save(tmp_path, entry, checkpoint, model)
    whole_state = load_file(str(whole / "model.safetensors"))
    out = shard(entry.name, whole, 2, tmp_path / "shards")
    row_parallel = 0
    for rank in range(2):
        state = load_file(str(out / f"model-rank{rank}-of-2.safetensors"))
        for key in [k for k in state if k.endswith(".quant_bias")]:
            prefix = key[: -len("quant_bias")]
            if state[prefix + "weight"].shape[1] == whole_state[prefix + "weight"].shape[1]:
                continue  # not cut by its columns
            row_parallel += 1
            columns = state[prefix + "weight"].to(torch.int64)
            correction = state[prefix + "input_offset"].to(torch.int64) * columns.sum(dim=1)
            assert torch.equal(state[key].to(torch.int64), -correction), (rank, key)
            assert state[key].dtype == torch.int32
            whole_bias = quantized.own_tensors(
                {name[len(prefix):]: t for name, t in whole_state.items() if name.startswith(prefix)}, "w8a8")["bias"]
            assert state[prefix + "bias"].is_floating_point() and torch.equal(state[prefix + "bias"], whole_bias)
    assert row_parallel >= 2 * 2  # attention output and MLP fc2 of at least one block, on both ranks


# ---- bad checkpoints ------------------------------------------------------------------------------------------


def broken_copy(tmp_path, directory, change):
    """A copy of a quantized directory with `change(state, description)` applied to its file."""
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    weights = quantized.modelslim_weights(broken)
    state = load_file(str(weights))
    description = json.loads((broken / quantized.DESCRIPTION_FILE).read_text())
    change(state, description)
    save_file(state, str(weights))
    (broken / quantized.DESCRIPTION_FILE).write_text(json.dumps(description))
    return broken


@pytest.fixture(scope="module")
def our_bert_w8a8(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("w8a8")
    entry, checkpoint, _, model = quantized_fixture("bert")
    return save(tmp_path, entry, checkpoint, model, torch.float16)


LAYER = "blocks.1.attn.proj"
BAD = {
    "missing scale": (lambda s, d: s.pop(f"{LAYER}.input_scale"), [f"{LAYER}.input_scale is missing"]),
    "float weight": (lambda s, d: s.update({f"{LAYER}.weight": s[f"{LAYER}.weight"].half()}),
                     [f"{LAYER}.weight is F16", "W8A8"]),
    "int64 quant_bias": (lambda s, d: s.update({f"{LAYER}.quant_bias": s[f"{LAYER}.quant_bias"].long()}),
                         [f"{LAYER}.quant_bias is torch.int64, not int32"]),
    "foreign deq_scale": (lambda s, d: s.update({f"{LAYER}.deq_scale": pack_deq_scale(
        unpack_deq_scale(s[f"{LAYER}.deq_scale"]) * 1.5)}), [f"{LAYER}.deq_scale differs from input_scale x weight_scale"]),
    "asymmetric weights": (lambda s, d: s[f"{LAYER}.weight_offset"].fill_(3), [f"{LAYER}.weight_offset is not zero"]),
    "mixed schemes": (lambda s, d: d.update({f"{LAYER}.weight": "W8A8_DYNAMIC"}), ["mixes W8A8 with W8A8_DYNAMIC"]),
    "unknown scheme": (lambda s, d: d.update({"model_quant_type": "W4A8"}), ["model_quant_type 'W4A8'"]),
}


@pytest.mark.parametrize("fault", list(BAD))
def test_a_bad_quantized_checkpoint_is_refused_naming_the_tensor_and_the_fix(tmp_path, our_bert_w8a8, fault):
    change, words = BAD[fault]
    broken = broken_copy(tmp_path, our_bert_w8a8, change)
    with pytest.raises(UserError) as refused:
        npu_models.load_model(broken, device="cpu")
    message = str(refused.value)
    assert all(w in message for w in words), message
    assert "quantize" in message  # the fix: quantize again (weights_tools.quantize or msModelSlim)


def test_a_scheme_the_chip_cannot_run_is_refused_before_any_weight_is_read(tmp_path, ascend_chip, monkeypatch):
    entry, checkpoint, _, model = quantized_fixture("bert", "w8a8-dynamic")
    out = save(tmp_path, entry, checkpoint, model, torch.float16)
    (out / "model.safetensors").write_bytes(b"not read")  # reading it would fail differently
    ascend_chip("Ascend310P3")
    monkeypatch.setattr(runtime, "resolve_device", lambda device: NPU0)  # torch.device("npu") needs real torch_npu
    with pytest.raises(UserError, match="w8a8-dynamic, which .* cannot run: .*per-token activation scales"):
        npu_models.load_model(out, device="npu:0")
    ascend_chip("Ascend910B2")  # A2 takes per-token scales: loading goes on, to the unreadable file
    with pytest.raises(UserError, match="not a readable checkpoint"):
        npu_models.load_model(out, device="npu:0")


def test_bench_times_a_quantized_checkpoint_under_its_scheme(tmp_path, capsys):
    from eval.bench import cli
    entry, checkpoint, _, model = quantized_fixture("bert", "w8a8-dynamic")
    out = save(tmp_path, entry, checkpoint, model)
    rows_file = tmp_path / "bench.json"
    argv = ["--checkpoint", str(out), "--device", "cpu", "--batch-sizes", "2", "--seq-len", "8", "--modes", "eager",
            "--warmup", "0", "--iters", "1", "--json", str(rows_file)]
    cli.main(argv)
    rows = json.loads(rows_file.read_text())
    assert [(r["impl"], r["quant"]) for r in rows] == [("ours", "w8a8-dynamic")]  # the peer cannot read the file
    assert "the peer cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*argv, "--quant", "none,w8a8"])
    assert "quantized already" in capsys.readouterr().err
