"""eval.bench's rows as people and programs read them: the console table, the markdown table, CSV and JSON
files, and a throughput plot."""
import csv
from pathlib import Path

from eval.store import write_json_atomic
from npu_models.errors import UserError

COLUMNS = ["model", "impl", "quant", "mode", "load", "batch_size", "seq_len", "samples_per_second", "latency_ms_p50",
           "latency_ms_p90", "first_call_s", "gflop_per_batch", "tflops", "fraction_of_peak", "peak", "ceiling_fraction_of_peak", "fraction_of_ceiling", "device", "dtype", "tp",
           "param_mb_per_rank", "max_abs_diff_vs_peer", "date"]


def write_rows(rows: list[dict], json_path: Path | None, csv_path: Path | None) -> None:
    if json_path:
        write_json_atomic(json_path, rows)
    if csv_path:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: `pip install -e .[plot]`.") from None
    figure, axes = plt.subplots(figsize=(6, 4))
    for impl, quant, mode in sorted({(r["impl"], r["quant"], r["mode"]) for r in rows}):
        points = sorted((r["batch_size"], r["samples_per_second"]) for r in rows
                        if (r["impl"], r["quant"], r["mode"]) == (impl, quant, mode))
        axes.plot(*zip(*points), marker="o", label=f"{impl} {mode}" + ("" if quant == "none" else f" {quant}"))
    first = rows[0]
    axes.set(xscale="log", xlabel="batch size", ylabel="samples / s",
             title=f"{first['model']} seq {first['seq_len']}, {first['dtype']}, {first['device']}")
    axes.set_xticks(sorted({r["batch_size"] for r in rows}), labels=sorted({r["batch_size"] for r in rows}))
    axes.set_ylim(bottom=0)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def percent_of_peak(row: dict) -> str:
    """The row's share of its peak (its dtype's matmul, or the int8 GEMM for int8 rows); '-' where none was
    measured."""
    return percent(row.get("fraction_of_peak"))


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}"


def format_table(rows: list[dict]) -> str:
    header = (f"{'impl':<5} {'mode':<6} {'load':<4} {'quant':<12} {'tp':>2} {'batch':>5} {'seq':>4} {'samples/s':>10} {'p50 ms':>9} {'p90 ms':>9} "
              f"{'% peak':>7} {'ceil %':>7} {'% ceil':>7} {'MiB/rank':>9} {'diff vs peer':>12}")
    lines = [header]
    for r in rows:
        diff = "" if r["max_abs_diff_vs_peer"] is None else f"{r['max_abs_diff_vs_peer']:.1e}"
        lines.append(f"{r['impl']:<5} {r['mode']:<6} {r['load']:<4} {r['quant']:<12} {r['tp']:>2} {r['batch_size']:>5} {r['seq_len']:>4} "
                     f"{r['samples_per_second']:>10.1f} {r['latency_ms_p50']:>9.2f} {r['latency_ms_p90']:>9.2f} "
                     f"{percent_of_peak(r):>7} {percent(r['ceiling_fraction_of_peak']):>7} "
                     f"{percent(r['fraction_of_ceiling']):>7} {r['param_mb_per_rank']:>9.1f} {diff:>12}")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """Every row as one markdown table, then each implementation's best mode per model part and batch size
    set side by side (the honest ratio: each at its fastest)."""
    lines = ["| model | impl | quant | mode | load | batch | seq | samples/s | p50 ms | TFLOP/s | % of peak | ceiling % of peak "
             "| % of ceiling | max diff vs peer |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        diff = "" if r["max_abs_diff_vs_peer"] is None else f"{r['max_abs_diff_vs_peer']:.1e}"
        lines.append(f"| {r['model']} | {r['impl']}{'' if r['tp'] == 1 else ' tp' + str(r['tp'])} | {r['quant']} | {r['mode']} | "
                     f"{r['load']} | {r['batch_size']} | {r['seq_len']} | {r['samples_per_second']:.1f} | {r['latency_ms_p50']:.2f} | "
                     f"{r['tflops']:.2f} | {percent_of_peak(r)} | {percent(r['ceiling_fraction_of_peak'])} | "
                     f"{percent(r['fraction_of_ceiling'])} | {diff} |")
    pairs = best_against_best(rows)
    if pairs:
        lines += ["", "| model | batch | load | quant | ours best | peer best | ours / peer |",
                  "|---|---:|---|---|---|---|---:|"]
        for ours, peer in pairs:
            lines.append(f"| {ours['model']} | {ours['batch_size']} | {ours['load']} | {ours['quant']} | "
                         f"{ours['mode']}, {ours['samples_per_second']:.1f}/s | "
                         f"{peer['mode']}, {peer['samples_per_second']:.1f}/s | "
                         f"{ours['samples_per_second'] / peer['samples_per_second']:.2f}x |")
    first = rows[0]
    lines += ["", f"{first['device']}, {first['dtype']}, {first['date']}; peak = dense {first['dtype']} matmul measured "
              "in the same run; ceiling = the part's own matmuls, convolutions and attention run alone (eval.bench.ceiling)"
              + ("; int8 rows against the int8 GEMM (torch._int_mm) measured in the same run."
                                   if any(r["quant"] != "none" for r in rows) else ".")]
    return "\n".join(lines)


def quant_speedups(rows: list[dict]) -> list[str]:
    """Each quantized row of ours against our float row of the same part, mode, load, batch size and tp: one line
    each ("w8a8 / float, eager, busy, batch 8: 2.07x")."""
    def key(r):
        return r["model"], r["mode"], r["load"], r["batch_size"], r["tp"]
    floats = {key(r): r for r in rows if r["impl"] == "ours" and r["quant"] == "none"}
    return [f"{r['model']}: {r['quant']} / float, {r['mode']}, {r['load']}, batch {r['batch_size']}: "
            f"{r['samples_per_second'] / floats[key(r)]['samples_per_second']:.2f}x"
            for r in rows if r["impl"] == "ours" and r["quant"] != "none" and key(r) in floats]


def best_against_best(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(ours, the whole peer) at each one's fastest mode, per model part, batch size, our tp degree and our
    quantization (float and int8 each against the float peer), under the same load."""
    best = {}
    for r in rows:
        key = (r["model"], r["batch_size"], r["load"], r["impl"], r["tp"], r["quant"])
        if key not in best or r["samples_per_second"] > best[key]["samples_per_second"]:
            best[key] = r
    pairs = [(best[key], best.get((*key[:3], "peer", 1, "none"))) for key in best if key[3] == "ours"]
    return [(ours, peer) for ours, peer in pairs if peer is not None]


def format_end_to_end(rows: list[dict]) -> str:
    header = (f"{'impl':<5} {'flow':<12} {'mode':<6} {'process':<7} {'batch':>5} {'sentences':>9} {'seconds':>8} {'sent/s':>8} "
              f"{'token rows':>10} {'speedup':>8} {'agree':>6} {'diff vs peer':>12}")
    lines = [header]
    for r in rows:
        lines.append(f"{r['impl']:<5} {r['flow']:<12} {r['mode']:<6} {r['process']:<7} {r['batch_size']:>5} {r['sentences']:>9} "
                     f"{r['seconds']:>8.2f} {r['sentences_per_second']:>8.1f} {r['token_rows']:>10} "
                     f"{r['speedup_vs_peer']:>7.2f}x {r['agree_with_peer']:>6} {r['max_abs_diff_vs_peer']:>12.1e}")
    return "\n".join(lines)
