"""Compile once (runtime.compile_cache): graph mode keeps torch's compiled graphs in the cache directory, so a
second compile of the same model and shape loads them; compile_s counts the first call per shape; the
cache directory is checked before any work; torchair's GE graph is kept by its cache_compile."""
import os

import pytest
import torch
import torch._functorch.config
import torch._inductor.config
from torch import nn
from torch._dynamo.utils import counters

import npu_models
from eval import sst2
from npu_models import runtime
from npu_models.errors import UserError
from npu_models.runtime import compile_cache
from tests.npu_standin import NPU0


@pytest.fixture
def restored_cache_settings(monkeypatch):
    """Whatever a test points torch's caches at is undone after it. torch's config entries go through the
    config's own patch(): pytest's monkeypatch restores an attribute that is not in a module's __dict__ with
    delattr (pytest >= 9.2), which deletes the config entry for every later test."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""))
    with torch._inductor.config.patch(fx_graph_cache=torch._inductor.config.fx_graph_cache), \
            torch._functorch.config.patch(enable_autograd_cache=torch._functorch.config.enable_autograd_cache):
        yield
    from torch._inductor.utils import clear_caches
    clear_caches()


def small_net():
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval().requires_grad_(False)


def test_a_second_compile_of_the_same_function_and_shape_loads_it_from_the_cache(tmp_path, restored_cache_settings,
                                                                                 compiled_graphs):
    """Inductor's caches, for what is not saved as a graph (a plain function here; every graph on CUDA): a model's
    forward on the CPU is a saved graph, tests/test_saved_graphs.py."""
    net, x = small_net(), torch.randn(2, 8)
    with torch.no_grad():
        runtime.compile_model(lambda t: net(t), torch.device("cpu"), compile_cache=tmp_path)(x)
        assert compiled_graphs() == (1, 0)
        assert counters["inductor"]["fxgraph_cache_miss"] == 1 and counters["inductor"]["fxgraph_cache_hit"] == 0
        assert any((tmp_path / "inductor").rglob("*")), "the compiled graph was not written to the cache directory"
        torch._dynamo.reset()  # as a new process would: nothing compiled in memory
        counters.clear()
        again = runtime.compile_model(lambda t: net(t), torch.device("cpu"), compile_cache=tmp_path)(x)
    assert counters["inductor"]["fxgraph_cache_hit"] == 1 and counters["inductor"]["fxgraph_cache_miss"] == 0
    torch.testing.assert_close(again, net(x))


def test_off_turns_torchs_compile_caches_off(restored_cache_settings):
    assert compile_cache.use_compile_cache("off") is None
    assert not torch._inductor.config.fx_graph_cache and not torch._functorch.config.enable_autograd_cache
    assert compile_cache.resolve_compile_cache(False) is None


def test_the_default_cache_is_the_users_inductor_dir_else_under_the_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(compile_cache, "_USER_INDUCTOR_DIR", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.resolve_compile_cache(None) == tmp_path / "npu-models" / "compile"
    monkeypatch.setattr(compile_cache, "_USER_INDUCTOR_DIR", "/somewhere/inductor")
    assert compile_cache.resolve_compile_cache(None) == compile_cache.Path("/somewhere/inductor")


def test_compile_s_counts_the_first_call_of_each_new_shape_only():
    calls = []
    timed = compile_cache.FirstCallTimer(lambda x: calls.append(x.shape) or x, None, torch.device("cpu"),
                                         runtime.graph.call_key)
    before = runtime.compile_seconds()
    timed(torch.ones(2, 3))
    after_first = runtime.compile_seconds()
    timed(torch.zeros(2, 3))  # the same shape: replayed, not compiled
    assert runtime.compile_seconds() == after_first > before
    timed(torch.ones(4, 3))   # a new shape: compiled
    assert runtime.compile_seconds() > after_first and len(timed.seen) == 2 and len(calls) == 3


def test_compile_cache_reaches_load_model(monkeypatch, tmp_path):
    seen = {}

    def fake_load_model(*args, **kwargs):
        seen.update(kwargs)
        raise UserError("stop here")

    monkeypatch.setattr(npu_models, "load_model", fake_load_model)
    with pytest.raises(SystemExit):
        sst2.main(["--graph", "--device", "cpu", "--compile-cache", str(tmp_path / "cache")])
    assert seen["compile_cache"] == tmp_path / "cache"


@pytest.mark.parametrize("argv", [["--graph"], []])
def test_an_unwritable_compile_cache_is_refused_before_any_work(monkeypatch, tmp_path, capsys, argv):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(npu_models, "load_model", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr(sst2, "read_sst2", lambda *a, **k: pytest.fail("work started"))
    if not argv:  # eager mode does not use the cache: nothing to refuse, the work starts
        with pytest.raises(pytest.fail.Exception, match="work started"):
            sst2.main(["--device", "cpu", "--compile-cache", str(tmp_path / "a_file" / "cache")])
        return
    with pytest.raises(SystemExit) as exit_info:
        sst2.main([*argv, "--device", "cpu", "--compile-cache", str(tmp_path / "a_file" / "cache")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"the compile cache {tmp_path / 'a_file' / 'cache'} cannot be written" in err
    assert "--compile-cache off" in err


def test_load_model_refuses_an_unwritable_cache_before_reading_weights(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"cannot be written .*compile_cache='off'"):
        runtime.check_compile_cache(tmp_path / "a_file" / "cache")


def test_torchairs_ge_graph_is_kept_by_cache_compile(ascend_chip, tmp_path, restored_cache_settings):
    standin = ascend_chip("Ascend910B2")
    net, x = small_net(), torch.randn(2, 8)
    compiled = runtime.compile_model(net, NPU0, "ge", compile_cache=tmp_path)
    torch.testing.assert_close(compiled(x), net(x))
    [call] = standin.cache_compiles
    assert call["func"] == net.forward and call["dynamic"] is True  # one graph for every shape: no guards on load
    assert call["cache_dir"] == str(tmp_path / "torchair" / compile_cache.code_fingerprint())
    assert call["config"].experimental_config.frozen_parameter and len(standin.graphs) == 1


@pytest.mark.parametrize("backend, cache, fn", [("ge", "off", "module"), ("npugraph_ex", None, "module"),
                                                ("ge", None, "function")])
def test_cache_compile_only_where_it_applies(ascend_chip, tmp_path, restored_cache_settings, backend, cache, fn):
    """Not with the cache off, not for npugraph_ex (capture per static shape), not for a plain function."""
    standin = ascend_chip("Ascend910B2")
    net, x = small_net(), torch.randn(2, 8)
    model = net if fn == "module" else (lambda t: net(t))
    compiled = runtime.compile_model(model, NPU0, backend, compile_cache=cache if cache else tmp_path)
    torch.testing.assert_close(compiled(x), net(x))
    assert standin.cache_compiles == [] and len(standin.graphs) == 1


def test_no_test_patches_a_torch_config_with_monkeypatch():
    """The rule above, for every test module: a torch config (torch._inductor.config, torch._dynamo.config,
    ...) is patched with its own config.patch, never with pytest's monkeypatch."""
    import re
    from pathlib import Path
    pattern = re.compile(r"monkeypatch\.(setattr|delattr)\(\s*[\w.]*config\b")
    offenders = [f"{path.name}:{number}" for path in sorted(Path(__file__).parent.glob("*.py"))
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if pattern.search(line)]
    assert offenders == [], "patch torch config with its own config.patch(...): " + ", ".join(offenders)
