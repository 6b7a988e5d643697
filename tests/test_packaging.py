"""What a new user meets after `pip install`: our import names are ours alone, and every command starts from
any directory and speaks once, in one line per message (no Python source lines, no torch start-up notices)."""
import importlib.metadata
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "npu-models"
COMMANDS = ["eval.sst2", "eval.imagenet", "eval.vqa", "eval.retrieval", "eval.bench", "npu_models.doctor",
            "weights_tools.convert", "weights_tools.shard", "weights_tools.verify", "weights_tools.quantize", "weights_tools.compile",
            "npu_models.serve", "eval.bench.serve", "eval.bench.naive_server"]


def our_import_names() -> list[str]:
    """The top-level packages pyproject.toml installs."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return [pattern.rstrip("*") for pattern in config["tool"]["setuptools"]["packages"]["find"]["include"]]


def test_no_other_installed_distribution_provides_our_import_names():
    """Two distributions sharing an import name break one another: from the repository root ours shadows theirs
    (transformers >= 5.25 failed on our old `kernels`), elsewhere theirs shadows ours."""
    names = our_import_names()
    assert "npu_kernels" in names and "kernels" not in names
    providers = importlib.metadata.packages_distributions()
    clashes = {name: sorted(set(providers.get(name, [])) - {DISTRIBUTION}) for name in names}
    assert {name: others for name, others in clashes.items() if others} == {}


def run_outside_the_repository(tmp_path, *args, timeout=240) -> subprocess.CompletedProcess:
    """`python *args` from a directory outside the checkout, as a user's shell runs it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NPU_MODELS_DEBUG")}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_starts_from_any_directory(tmp_path, command):
    done = run_outside_the_repository(tmp_path, "-m", command, "--help")
    assert done.returncode == 0, done.stderr
    assert f"python -m {command}" in done.stdout and done.stderr == ""


def test_the_demo_says_random_weights_once_and_prints_no_source_lines(tmp_path):
    done = run_outside_the_repository(tmp_path, "-m", "eval.sst2", "--limit", "2", "--output", "out.json")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("RANDOM") == 1, done.stderr  # the banner, not the banner and a warning as well
    assert "Warning" not in done.stderr and "warnings.warn" not in done.stderr and ".py:" not in done.stderr
    assert "CUDA" not in done.stderr and (tmp_path / "out.json").is_file()


def test_a_cpu_graph_drops_torchs_cuda_home_notice_and_nothing_else(caplog):
    """Inductor imports torch.utils.cpp_extension for a CPU graph's include paths, which warns "No CUDA runtime is
    found, using CUDA_HOME=..." wherever a CUDA toolkit lies on the disk: noise on a CPU run."""
    import torch._functorch.config
    import torch._inductor.config

    from npu_models import runtime
    from npu_models.runtime.graph import CudaHomeNotice
    logger = logging.getLogger("torch.utils.cpp_extension")
    for earlier in [f for f in logger.filters if isinstance(f, CudaHomeNotice)]:  # from an earlier test's compile
        logger.removeFilter(earlier)
    net = nn.Sequential(nn.Linear(4, 4)).eval()
    with torch._inductor.config.patch(fx_graph_cache=torch._inductor.config.fx_graph_cache), \
            torch._functorch.config.patch(enable_autograd_cache=torch._functorch.config.enable_autograd_cache):
        runtime.compile_model(net, torch.device("cpu"), compile_cache="off")  # wraps; compiles on the first call
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logger.warning("Error checking compiler version for %s", "c++")
    assert [r.getMessage() for r in caplog.records] == ["Error checking compiler version for c++"]


def test_a_text_only_eager_command_never_imports_torchvision_or_dynamo(tmp_path):
    """eval.sst2 reads no image: torchvision (about a second to import, torch._dynamo through torchvision.ops)
    stays out of its process, start-up and run alike. So does torch._dynamo itself, another second, which
    building the model on the meta device imported through nn.init.normal_ until layers.init.SkipInit."""
    script = ("import sys\nfrom eval import sst2\nsst2.main(['--limit', '2', '--device', 'cpu'])\n"
              "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n"
              "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n")
    done = run_outside_the_repository(tmp_path, "-c", script)
    assert done.returncode == 0, done.stderr


# Records GOMP_SPINCOUNT at the moment torch is first imported (when libgomp reads its settings), then imports the
# command's module.
SPIN_AT_TORCH_IMPORT = """
import builtins, importlib, os, sys
seen = []
real_import = builtins.__import__
def watch(name, *args, **kwargs):
    if name.split(".")[0] == "torch" and "torch" not in sys.modules and not seen:
        seen.append(os.environ.get("GOMP_SPINCOUNT"))
    return real_import(name, *args, **kwargs)
builtins.__import__ = watch
importlib.import_module(sys.argv[1])
print(seen[0])
"""


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_sets_openmps_spin_count_before_torch_loads_it(tmp_path, command):
    """runtime/openmp.py: spinning OpenMP threads made int8 slower than float on a busy machine; libgomp reads
    GOMP_SPINCOUNT once, when torch is imported, so every command must have set it by then."""
    module = command.removesuffix(".__main__")
    done = run_outside_the_repository(tmp_path, "-c", SPIN_AT_TORCH_IMPORT, module)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10000"]


@pytest.mark.parametrize("users, expected", [({"GOMP_SPINCOUNT": "5"}, "5"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "None")])
def test_the_users_own_openmp_settings_are_left_alone(tmp_path, monkeypatch, users, expected):
    for name, value in users.items():
        monkeypatch.setenv(name, value)
    done = run_outside_the_repository(tmp_path, "-c", SPIN_AT_TORCH_IMPORT, "eval.sst2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [expected]


PEERS_SPIN_COUNT = """
import npu_models  # sets GOMP_SPINCOUNT for this process (torch not imported yet)
import os
from npu_models.runtime.openmp import users_environment
print(os.environ.get("GOMP_SPINCOUNT"), users_environment().get("GOMP_SPINCOUNT"))
"""


@pytest.mark.parametrize("users, expected", [({}, ["10000", "None"]), ({"GOMP_SPINCOUNT": "5"}, ["5", "5"])])
def test_a_peers_process_gets_the_users_environment_without_our_openmp_setting(tmp_path, monkeypatch, users, expected):
    """eval.bench's whole-process ModelZoo flow must start as transformers' users start it: libgomp's own spin
    count unless the user chose one."""
    for name, value in users.items():
        monkeypatch.setenv(name, value)
    done = run_outside_the_repository(tmp_path, "-c", PEERS_SPIN_COUNT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected
