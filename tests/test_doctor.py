"""python -m npu_models.doctor: the whole report on the CPU, a planted failure named in its row, and the
environment/plan section as a 310P through the stand-in."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from npu_kernels.quant_matmul import SCHEMES
from npu_models import doctor
from tests.conftest import FIXTURES
from tests.npu_standin import NPU0

REFERENCE = FIXTURES / "reference"


def test_doctor_on_cpu_passes_and_its_json_holds_every_fixture_per_mode(tmp_path):
    report = tmp_path / "doctor.json"
    done = subprocess.run([sys.executable, "-m", "npu_models.doctor", "--device", "cpu", "--json", str(report)],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "doctor: " in done.stdout and "FAIL" not in done.stdout
    result = json.loads(report.read_text())
    assert result["environment"]["torch"] == torch.__version__ and result["environment"]["dtype"] == "fp32"
    modes = {(r["check"], r["mode"]) for r in result["rows"]}
    assert {(f"fixture {m}", "eager") for m in doctor.FIXTURE_MODELS} <= modes
    assert {(f"fixture {m}", "graph") for m in doctor.CPU_GRAPH_MODELS} <= modes
    assert {(f"fixture {m}", f"eager {s}") for m in doctor.FIXTURE_MODELS for s in SCHEMES} <= modes  # int8 too
    assert {(f"fixture {m}", "graph w8a8") for m in doctor.CPU_GRAPH_MODELS} <= modes
    assert result["environment"]["int8"] == {scheme: "runs" for scheme in SCHEMES}
    assert {"kernel gelu (torch)", "kernel attention+mask (sdpa)"} <= {r["check"] for r in result["rows"]}
    bert = next(r for r in result["rows"] if r["check"] == "fixture bert" and r["mode"] == "eager")
    assert {t["name"] for t in bert["detail"]["tensors"]} >= {"logits", "probs"}  # every figure travels


def fixtures_with_corrupted_bert(tmp_path):
    for model in doctor.FIXTURE_MODELS:
        shutil.copytree(REFERENCE / model, tmp_path / model)
    outputs = load_file(str(tmp_path / "bert" / "outputs.safetensors"))
    outputs["logits"] = outputs["logits"] + 0.1
    save_file(outputs, str(tmp_path / "bert" / "outputs.safetensors"))
    return tmp_path


def test_a_planted_failure_fails_the_doctor_and_names_its_row(tmp_path, monkeypatch, capsys, compiled_graphs):
    from npu_kernels import checks
    fixtures = fixtures_with_corrupted_bert(tmp_path / "fixtures")
    monkeypatch.setattr(doctor, "CPU_GRAPH_MODELS", ("vit",))
    monkeypatch.setattr(checks, "gelu", lambda x, plan: torch.tanh(x))  # a wrong backend
    report = tmp_path / "doctor.json"
    assert doctor.main(["--device", "cpu", "--fixtures", str(fixtures), "--json", str(report)]) == 1
    out = capsys.readouterr().out
    failing = [line for line in out.splitlines() if " FAIL " in line]
    assert len(failing) == 2, out
    assert failing[0].startswith("fixture bert") and "['logits'" in failing[0]
    assert failing[1].startswith("kernel gelu (torch)")
    rows = json.loads(report.read_text())["rows"]
    assert [r["check"] for r in rows if not r["ok"]] == ["fixture bert", "kernel gelu (torch)"]
    graphs, breaks = compiled_graphs()
    assert graphs >= 1 and breaks == 0  # the graph row really compiled


def test_missing_fixtures_name_the_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        doctor.main(["--device", "cpu", "--fixtures", str(tmp_path)])
    assert "--fixtures" in capsys.readouterr().err


def test_the_environment_and_plan_section_as_a_310p(ascend_chip):
    ascend_chip("Ascend310P3")
    facts = doctor.describe(NPU0)
    assert facts["chip"] == "Ascend310P3" and facts["device_count"] == 1 and facts["dtype"] == "fp16"
    assert facts["settings"]["nz_weights"] is True and facts["settings"]["jit_compile"] is False
    assert facts["int8"]["w8a8"] == "runs" and facts["int8"]["w8a16"] == "runs"
    assert "per-token activation scales" in facts["int8"]["w8a8-dynamic"]  # the 310P has no pertoken_scale
    plan = facts["kernel_plan"]
    assert plan["fused_ops"] == ["npu_prompt_flash_attention", "npu_gelu"]
    reasons = dict(plan["reasons"])
    assert "doc names the Atlas inference series" in reasons["attention"]
    assert "not npu_add_layer_norm" in reasons["add_layer_norm"]
    report = doctor.format_report(facts, [doctor.timed_row("kernels", "vs eager math", lambda: (True, 0.0, {}))])
    assert "chip: Ascend310P3" in report and "npu_prompt_flash_attention: its doc names" in report


def test_doctor_under_torchrun_checks_every_fixture_split_two_ways(tmp_path):
    """The command a user with two chips runs, on two CPU processes: a tp=2 row per fixture, rank 0 reports."""
    report = tmp_path / "doctor-tp2.json"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "npu_models.doctor", "--device", "cpu", "--tp", "2", "--json", str(report)],
                          capture_output=True, text=True, timeout=1200, cwd=REFERENCE.parents[2])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("doctor: ") == 1  # rank 0 alone prints the table
    rows = json.loads(report.read_text())["rows"]
    assert {(f"fixture {m}", "eager tp=2") for m in doctor.FIXTURE_MODELS} <= {(r["check"], r["mode"]) for r in rows}
    assert {(f"fixture {m}", f"eager tp=2 {s}") for m in doctor.FIXTURE_MODELS for s in SCHEMES} <= {
        (r["check"], r["mode"]) for r in rows}  # int8 quantized whole, then cut
    assert all(r["ok"] for r in rows)


def test_a_wrong_int8_kernel_fails_the_int8_rows_only(tmp_path, monkeypatch, capsys):
    from npu_kernels import quant_matmul
    monkeypatch.setattr(doctor, "CPU_GRAPH_MODELS", ())
    original = quant_matmul.int_mm_linear
    monkeypatch.setattr(quant_matmul, "int_mm_linear", lambda x, params, scheme: original(x, params, scheme) * 1.3)
    report = tmp_path / "doctor.json"
    assert doctor.main(["--device", "cpu", "--json", str(report)]) == 1
    rows = json.loads(report.read_text())["rows"]
    failing = {(r["check"], r["mode"]) for r in rows if not r["ok"]}
    assert {(f"fixture {m}", "eager w8a8") for m in doctor.FIXTURE_MODELS} <= failing
    assert all(mode.split()[-1] in SCHEMES for _, mode in failing)  # float rows and kernels still pass
