import json
import os

import pytest

from eval.bench import cli, flops, report
from eval.bench.report import COLUMNS
from npu_models import registry
from tests.conftest import BERT_FIXTURE, FIXTURES

pytest.importorskip("transformers")


def test_bench_rows_cover_both_implementations_on_the_same_weights(tmp_path, capsys):
    out_json, out_csv = tmp_path / "bench.json", tmp_path / "bench.csv"
    cli.main(["--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--device", "cpu", "--batch-sizes", "1,3",
                "--seq-len", "16", "--modes", "eager", "--warmup", "1", "--iters", "2",
                "--json", str(out_json), "--csv", str(out_csv)])
    rows = json.loads(out_json.read_text())
    assert [(r["impl"], r["batch_size"]) for r in rows] == [("ours", 1), ("peer", 1), ("ours", 3), ("peer", 3)]
    for row in rows:
        assert set(COLUMNS) <= set(row)
        assert row["samples_per_second"] > 0 and row["latency_ms_p90"] >= row["latency_ms_p50"] > 0
        assert row["dtype"] == "fp32" and row["seq_len"] == 16
    assert all(r["max_abs_diff_vs_peer"] < 1e-5 for r in rows if r["impl"] == "peer")
    assert out_csv.read_text().splitlines()[0] == ",".join(COLUMNS)
    streamed = capsys.readouterr().out.splitlines()
    first_row = next(i for i, line in enumerate(streamed) if line.startswith("ours "))
    # the rows stream under the model's name and a header that names their columns
    assert streamed[first_row - 2] == "bert-base-cased-sst2" and streamed[first_row - 1].split()[:2] == ["impl", "mode"]
    assert "samples/s" in streamed[first_row - 1]


def test_bench_rejects_unknown_modes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--modes", "eager,fast", "--device", "cpu"])
    assert "--modes takes eager and/or graph" in capsys.readouterr().err


def test_vit_bench_against_timm_on_the_fixture_npz(tmp_path):
    pytest.importorskip("timm")
    out = tmp_path / "vit.json"
    cli.main(["--model", "vit", "--checkpoint", str(FIXTURES / "reference" / "vit" / "checkpoint.npz"),
                "--device", "cpu", "--batch-sizes", "2", "--modes", "eager", "--warmup", "1", "--iters", "1",
                "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["impl"], r["seq_len"]) for r in rows] == [("ours", 10), ("peer", 10)]  # 3x3 patches + class token
    assert rows[1]["max_abs_diff_vs_peer"] < 1e-5


def test_no_peer_times_ours_alone(tmp_path):
    out = tmp_path / "ours.json"
    cli.main(["--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--device", "cpu", "--batch-sizes", "2",
                "--seq-len", "8", "--modes", "eager", "--warmup", "0", "--iters", "1", "--no-peer", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["impl"], r["seq_len"], r["max_abs_diff_vs_peer"]) for r in rows] == [("ours", 8, None)]


@pytest.mark.parametrize("model, checkpoint, seq_len", [("vlmo-base-vqa", "vqa_checkpoint.pt", 12 + 17),
                                                        ("vlmo-base-coco-retrieval", "retrieval_checkpoint.pt", 17)])
def test_vlmo_bench_times_ours_alone(tmp_path, capsys, compiled_graphs, model, checkpoint, seq_len):
    out = tmp_path / "vlmo.json"
    cli.main(["--model", model, "--checkpoint", str(FIXTURES / "reference" / "vlmo" / checkpoint), "--device", "cpu",
                "--batch-sizes", "2", "--modes", "eager,graph", "--warmup", "0", "--iters", "1", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["impl"], r["mode"], r["seq_len"]) for r in rows] == [("ours", "eager", seq_len), ("ours", "graph", seq_len)]
    assert "no peer implementation" in capsys.readouterr().err
    assert compiled_graphs() == (1, 0)


def test_blip_bench_times_each_inference_part(tmp_path):
    out = tmp_path / "blip.json"
    cli.main(["--model", "blip", "--checkpoint", str(FIXTURES / "reference" / "blip" / "checkpoint.pth"), "--device",
                "cpu", "--batch-sizes", "2", "--modes", "eager", "--warmup", "0", "--iters", "1", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["model"], r["seq_len"]) for r in rows] == [
        ("blip-retrieval-coco/image", 17), ("blip-retrieval-coco/text", 35), ("blip-retrieval-coco/itm", 35)]


def test_vilbert_bench_with_features_and_with_detection(tmp_path):
    out = tmp_path / "vilbert.json"
    cli.main(["--model", "vilbert", "--checkpoint", str(FIXTURES / "reference" / "vilbert" / "model.tar.gz"),
                "--device", "cpu", "--batch-sizes", "1", "--modes", "eager", "--warmup", "0", "--iters", "1",
                "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["vilbert-vqa", "vilbert-vqa/with-detection"]


@pytest.mark.parametrize("model, checkpoint", [
    ("bert", BERT_FIXTURE / "checkpoint"), ("vit", FIXTURES / "reference" / "vit" / "checkpoint.npz"),
    ("vlmo-base-vqa", FIXTURES / "reference" / "vlmo" / "vqa_checkpoint.pt"),
    ("vlmo-base-coco-retrieval", FIXTURES / "reference" / "vlmo" / "retrieval_checkpoint.pt"),
    ("blip", FIXTURES / "reference" / "blip" / "checkpoint.pth"),
    ("vilbert", FIXTURES / "reference" / "vilbert" / "model.tar.gz")])
def test_every_model_benches_in_bf16(tmp_path, model, checkpoint):
    """Image and region inputs are cast to the model's dtype (fp32 pixels into a bf16 model used to crash)."""
    out = tmp_path / "bf16.json"
    cli.main(["--model", model, "--checkpoint", str(checkpoint), "--device", "cpu", "--dtype", "bf16",
                "--batch-sizes", "2", "--seq-len", "16", "--modes", "eager", "--warmup", "0", "--iters", "1",
                "--json", str(out)])
    rows = json.loads(out.read_text())
    assert rows and all(r["dtype"] == "bf16" and r["samples_per_second"] > 0 for r in rows)
    for row in rows:
        if row["impl"] == "peer":  # the peer gets the same bf16 inputs and weights
            assert row["max_abs_diff_vs_peer"] < 0.5


def test_bench_with_tp2_reports_each_ranks_share_beside_the_peer(tmp_path):
    import os
    import subprocess
    import sys
    out = tmp_path / "tp2.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "eval.bench", "--tp", "2", "--checkpoint", str(BERT_FIXTURE / "checkpoint"),
                             "--device", "cpu", "--batch-sizes", "2", "--seq-len", "16", "--modes", "eager",
                             "--warmup", "0", "--iters", "1", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    ours, whole, peer = json.loads(out.read_text())
    assert [(r["impl"], r["tp"]) for r in (ours, whole, peer)] == [("ours", 2), ("ours", 1), ("peer", 1)]
    assert peer["max_abs_diff_vs_peer"] < 1e-5  # the split model computes what the whole peer does
    assert whole["param_mb_per_rank"] == peer["param_mb_per_rank"]
    assert 0.5 * whole["param_mb_per_rank"] < ours["param_mb_per_rank"] < 0.75 * whole["param_mb_per_rank"]
    assert result.stdout.count("bert-base-cased-sst2 on cpu") == 1  # rank 0 alone reports


def test_flops_are_counted_and_set_against_a_measured_matmul_peak(tmp_path):
    import torch
    linear = torch.nn.Linear(64, 32)
    assert flops.counted_flops(linear, (torch.randn(8, 64),)) == 2 * 8 * 64 * 32
    q, k = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 32, 8)  # attention is counted on the CPU too
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert flops.counted_flops(sdpa, (q, k, k)) == 2 * 2 * (2 * 4 * 16 * 32 * 8)
    assert flops.matmul_peak(torch.device("cpu"), torch.float32, size=256, iters=2) > 0
    out = tmp_path / "flops.json"
    cli.main(["--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--device", "cpu", "--batch-sizes", "4",
                "--seq-len", "16", "--modes", "eager", "--warmup", "0", "--iters", "2", "--json", str(out)])
    ours, peer = json.loads(out.read_text())
    # The same model on the same inputs, less the rows our classifier's last block skips: the 15 non-[CLS]
    # rows of 4 sequences need no q/output projection, MLP (2 flops per weight) or attention over 16 keys.
    config = registry.build_model(registry.get_entry("bert"), BERT_FIXTURE / "checkpoint").config
    dim, mlp, batch, length = config.embed_dim, config.mlp_dim, 4, 16
    skipped = batch * (length - 1) * (2 * 2 * dim * dim + 2 * 2 * dim * mlp + 2 * 2 * length * dim)
    assert (peer["gflop_per_batch"] - ours["gflop_per_batch"]) * 1e9 == pytest.approx(skipped, rel=1e-6)
    for row in (ours, peer):
        assert row["tflops"] > 0 and 0 < row["fraction_of_peak"] < 2
        # each row is also set against its own operators' rate (eval.bench.ceiling): a ratio, not a threshold
        assert row["ceiling_fraction_of_peak"] > 0 and row["fraction_of_ceiling"] == pytest.approx(
            row["fraction_of_peak"] / row["ceiling_fraction_of_peak"])


def test_the_ceiling_replays_exactly_the_counted_operators_on_the_real_weights():
    """eval.bench.ceiling: one call's counted operators (here a BERT model's matmuls and attention) recorded
    and run again alone do the FLOPs the counter counted for the whole call, with the model's own weights and
    stand-ins for everything else."""
    import torch
    from torch.utils._pytree import tree_map

    from eval.bench.ceiling import FlopOperatorRecorder, StandIn, flops_and_ceiling

    model = registry.build_model(registry.get_entry("bert"), BERT_FIXTURE / "checkpoint").eval()
    inputs = (torch.randint(1, 100, (2, 12)), torch.ones(2, 12, dtype=torch.long), torch.zeros(2, 12, dtype=torch.long))
    counted = flops.counted_flops(model, inputs)
    recorder = FlopOperatorRecorder(model)
    with torch.no_grad(), recorder:
        model(*inputs)
    ops = {func.overloadpacket for func, _, _ in recorder.calls}
    assert torch.ops.aten.addmm in ops and torch.ops.aten._scaled_dot_product_flash_attention_for_cpu in ops
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for func, args, _ in recorder.calls:
        if func.overloadpacket is torch.ops.aten.addmm:  # bias, activation, weight: the weights are the model's own
            bias, activation, weight = args[:3]
            assert {bias.untyped_storage().data_ptr(), weight.untyped_storage().data_ptr()} <= weights
            assert isinstance(activation, StandIn)

    def replay():
        for func, args, kwargs in recorder.calls:
            func(*tree_map(real, args), **tree_map(real, kwargs))

    def real(value):
        return value.make() if isinstance(value, StandIn) else value
    assert flops.counted_flops(replay, ()) == counted
    flops_counted, ceiling = flops_and_ceiling(model, model, inputs, torch.device("cpu"), warmup=0, iters=1)
    assert flops_counted == counted and ceiling > 0  # counted and recorded in one call, as counted_flops counts
    norm = torch.nn.LayerNorm(8)
    assert flops_and_ceiling(norm, norm, (torch.randn(2, 8),), torch.device("cpu"), warmup=0,
                             iters=1) == (0, None)  # nothing counted, no ceiling


def test_end_to_end_runs_the_sst2_command_beside_the_padded_flow(tmp_path):
    """eval.sst2's own path against every sentence padded to --seq-len through transformers, on the same
    weights, in one process and as whole processes (`python -m eval.sst2` and the ModelZoo flow's own): the
    same probabilities, far fewer token rows computed."""
    out = tmp_path / "e2e.json"
    cli.main(["--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--device", "cpu", "--end-to-end",
                "--modes", "eager", "--batch-sizes", "8", "--seq-len", "64", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["impl"], r["process"]) for r in rows] == [("ours", "one"), ("peer", "one"), ("ours", "whole"), ("peer", "whole")]
    for ours, peer in (rows[:2], rows[2:]):  # in one process, then each flow as its own process
        assert ours["sentences"] == 872
        # the fixture is cased (tokenizer_config.json): a flow that lower-cased would differ on capitalised words
        assert ours["agree_with_peer"] == 872 and ours["max_abs_diff_vs_peer"] < 1e-5
        assert peer["token_rows"] == 109 * 8 * 64  # 872 sentences in 109 batches of 8, every one padded to 64
        assert ours["token_rows"] < peer["token_rows"] / 3  # SST-2's length mix: about 21 tokens per sentence


def test_end_to_end_is_for_sst2_models(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--model", "vit", "--end-to-end", "--no-peer"])
    assert exit.value.code == 2 and "--end-to-end times the SST-2 eval" in capsys.readouterr().err


def test_busy_load_times_every_row_again_beside_spinning_processes(tmp_path, capsys, monkeypatch):
    from eval.bench import load
    started = []
    real_popen = load.subprocess.Popen
    monkeypatch.setattr(load.subprocess, "Popen", lambda *a, **k: started.append(real_popen(*a, **k)) or started[-1])
    out = tmp_path / "rows.json"
    cli.main(["--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--device", "cpu", "--batch-sizes", "2",
              "--seq-len", "8", "--modes", "eager", "--warmup", "0", "--iters", "1", "--no-peer", "--quant",
              "none,w8a8", "--load", "idle,busy", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["quant"], r["load"]) for r in rows] == [("none", "idle"), ("w8a8", "idle"), ("none", "busy"),
                                                       ("w8a8", "busy")]
    assert len(started) == os.cpu_count() and all(p.poll() is not None for p in started)  # one per core, all gone
    printed = capsys.readouterr().out
    assert "w8a8 / float, eager, idle, batch 2: " in printed and "w8a8 / float, eager, busy, batch 2: " in printed
    with pytest.raises(SystemExit):
        cli.main(["--load", "heavy", "--device", "cpu"])
    assert "--load takes a comma list of idle, busy, got 'heavy'" in capsys.readouterr().err


def test_markdown_table_sets_each_implementation_at_its_best_mode_side_by_side():
    def row(impl, mode, rate):
        return {"model": "m", "impl": impl, "quant": "none", "mode": mode, "load": "idle", "batch_size": 8, "seq_len": 128, "samples_per_second": rate,
                "latency_ms_p50": 1.0, "tflops": 1.0, "fraction_of_peak": 0.5,
                "ceiling_fraction_of_peak": 0.6, "fraction_of_ceiling": 0.83, "tp": 1, "device": "cpu",
                "dtype": "fp32", "date": "2026-11-28", "max_abs_diff_vs_peer": None if impl == "ours" else 1e-6}
    table = report.markdown_table([row("ours", "eager", 10.0), row("peer", "eager", 8.0), row("ours", "graph", 30.0),
                                  row("peer", "graph", 20.0)])
    assert table.count("\n| m | ") == 5  # four rows, one best-against-best line
    assert "| m | 8 | idle | none | graph, 30.0/s | graph, 20.0/s | 1.50x |" in table


def test_model_all_takes_no_checkpoint(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--model", "all", "--checkpoint", "x"])
    assert exit.value.code == 2 and "--model all runs every model" in capsys.readouterr().err


def test_the_command_line_parses_into_bench_options():
    from eval.bench.options import BenchOptions
    assert cli.parse_args([]) == BenchOptions() and BenchOptions().batch_sizes == [1, 8, 32]
    assert cli.parse_args(["--batch-sizes", "2,4", "--modes", "eager", "--end-to-end"]) == BenchOptions(
        batch_sizes=[2, 4], modes=("eager",), end_to_end=True)
    assert BenchOptions(end_to_end=True).batch_sizes == [32]
