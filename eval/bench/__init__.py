"""python -m eval.bench: cli (flags -> BenchOptions), throughput (each model part timed beside its peer),
end_to_end (the SST-2 eval against the ModelZoo flow), flops (FLOPs counted, matmul peak), report (table,
markdown, CSV/JSON, plot)."""
