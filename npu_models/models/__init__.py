"""One folder per model family: model.py (config and modules), checkpoint.py (official layout -> ours),
bench.py (what eval.bench times), outputs.py (what weights_tools.verify compares) and, in __init__.py, the
TP plan, the task adapter and SPECS, which npu_models/registry.py lists."""
