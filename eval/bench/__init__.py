"""python -m eval.bench: cli (flags -> BenchOptions), throughput (each model part timed beside its peer),
end_to_end (the SST-2 eval against the ModelZoo flow, in one process and as whole processes), modelzoo (that
flow, importable and runnable as its own process), flops (FLOPs counted, matmul peak), ceiling (the rate of a
part's own operators run alone), report (table, markdown, CSV/JSON, plot)."""
