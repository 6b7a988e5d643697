import npu_models  # noqa: F401  first, before torch: it sets how OpenMP's threads wait (npu_models/runtime/openmp.py)
