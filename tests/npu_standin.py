"""A stand-in for torch_npu and torchair, for tests only (never installed for users).

It encodes the contracts of the real wheel (torch_npu 2.14.0), independently of our kernel code:
- the ops we call are registered through torch.library under `torch.ops.npu` with the exact schemas of
  `torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml`, with fake (meta) kernels as in
  `torch_npu/op_plugin/meta/_meta_registrations.py`, so torch.compile(fullgraph=True) traces them;
- their CPU kernels refuse what `torch_npu/_op_plugin_docs.py` documents as unsupported (dtypes per chip,
  non-contiguous tensors, pse_shift on Atlas inference cards, the 310P batch/head/sequence limits and token
  limits, FIA's head-dim alignment, accepted mask shapes and dtypes) and compute the documented formula
  softmax(scale * Q K^T + pse_shift, True in atten_mask = masked out) V in fp32;
- the device query is a Python wrapper over a C builtin, as `torch.npu.get_device_name` is over
  `torch_npu._C._npu_getDeviceName`, so Dynamo cannot trace it;
- torchair's backend records the graphs it is handed (and the CompilerConfig) and runs them: the real
  one would hand them to GE here.

Tensors stay on the CPU: the stand-in checks our side of each call, not Ascend numerics.
"""
import collections
import itertools
import sys
import types

import torch

NO_LIMIT = 2147483647

# The schemas, verbatim from npu_native_functions_by_codegen.yaml (torch_npu 2.14.0).
SCHEMAS = {
    "npu_prompt_flash_attention": (
        "npu_prompt_flash_attention(Tensor query, Tensor key, Tensor value, *, Tensor? padding_mask=None, "
        "Tensor? atten_mask=None, Tensor? pse_shift=None, int[]? actual_seq_lengths=None, Tensor? deq_scale1=None, "
        "Tensor? quant_scale1=None, Tensor? deq_scale2=None, Tensor? quant_scale2=None, Tensor? quant_offset2=None, "
        "int num_heads=1, float scale_value=1.0, int pre_tokens=2147483647, int next_tokens=0, "
        "str input_layout=\"BSH\", int num_key_value_heads=0, int[]? actual_seq_lengths_kv=None, "
        "int sparse_mode=0) -> Tensor"),
    "npu_fused_infer_attention_score": (
        "npu_fused_infer_attention_score(Tensor query, Tensor key, Tensor value, *, Tensor? pse_shift=None, "
        "Tensor? atten_mask=None, SymInt[]? actual_seq_lengths=None, SymInt[]? actual_seq_lengths_kv=None, "
        "Tensor? dequant_scale1=None, Tensor? quant_scale1=None, Tensor? dequant_scale2=None, "
        "Tensor? quant_scale2=None, Tensor? quant_offset2=None, Tensor? antiquant_scale=None, "
        "Tensor? antiquant_offset=None, Tensor? key_antiquant_scale=None, Tensor? key_antiquant_offset=None, "
        "Tensor? value_antiquant_scale=None, Tensor? value_antiquant_offset=None, Tensor? block_table=None, "
        "Tensor? query_padding_size=None, Tensor? kv_padding_size=None, Tensor? key_shared_prefix=None, "
        "Tensor? value_shared_prefix=None, SymInt[]? actual_shared_prefix_len=None, Tensor? query_rope=None, "
        "Tensor? key_rope=None, Tensor? key_rope_antiquant_scale=None, int num_heads=1, float scale=1.0, "
        "int pre_tokens=2147483647, int next_tokens=2147483647, str input_layout=\"BSH\", "
        "int num_key_value_heads=0, int sparse_mode=0, int inner_precise=0, int block_size=0, int antiquant_mode=0, "
        "int key_antiquant_mode=0, int value_antiquant_mode=0, bool softmax_lse_flag=False) -> (Tensor, Tensor)"),
    "npu_gelu": "npu_gelu(Tensor self, *, str approximate='none') -> Tensor",
    "npu_add_layer_norm": (
        "npu_add_layer_norm(Tensor x1, Tensor x2, Tensor gamma, Tensor beta, float epsilon=1e-05, "
        "bool additional_output=False) -> (Tensor, Tensor, Tensor, Tensor)"),
}


class AscendContractError(RuntimeError):
    """A call the real op documents as unsupported."""


class StandIn:
    """The active chip, and what the fake device and compiler saw."""

    def __init__(self, chip: str):
        self.chip = chip
        self.calls = collections.Counter()      # op name -> number of calls
        self.graphs = []                        # FX graphs handed to the torchair backend
        self.compiler_configs = []

    @property
    def inference_card(self) -> bool:           # Atlas 300I / 310P ("Atlas 推理系列加速卡产品")
        return "Ascend310P" in self.chip

    @property
    def a2_or_a3(self) -> bool:
        return self.chip.startswith(("Ascend910B", "Ascend910_93"))

    def ops_in_graphs(self) -> collections.Counter:
        return collections.Counter(str(node.target) for gm in self.graphs for node in gm.graph.nodes
                                   if node.op == "call_function")


ACTIVE: StandIn | None = None


def _active() -> StandIn:
    if ACTIVE is None:
        raise AscendContractError("torch.ops.npu was called without the torch_npu stand-in installed")
    return ACTIVE


def _check(condition, message):
    if not condition:
        raise AscendContractError(f"{_active().chip}: {message}")


# ---- the documented contracts ------------------------------------------------------------------------


def _check_contiguous(**tensors):
    for name, tensor in tensors.items():
        _check(tensor is None or tensor.is_contiguous(), f"{name} is not contiguous (不支持非连续的Tensor)")


def _bnsd(tensor, layout, num_heads):
    """The tensor as [B, N, S, D] for the layouts the ops take."""
    if layout in ("BNSD", "BNSD_BSND"):
        return tensor
    if layout == "BSND":
        return tensor.transpose(1, 2)
    _check(layout == "BSH", f"input_layout {layout!r} is not one of BSH, BSND, BNSD, BNSD_BSND")
    batch, length, hidden = tensor.shape
    return tensor.view(batch, length, num_heads, hidden // num_heads).transpose(1, 2)


def _from_bnsd(out, layout):
    if layout == "BNSD":
        return out.contiguous()
    if layout in ("BSND", "BNSD_BSND"):
        return out.transpose(1, 2).contiguous()
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def _check_mask(mask, batch, q_len, k_len, shapes):
    if mask is None:
        return
    _check(mask.dtype in (torch.bool, torch.int8, torch.uint8), f"atten_mask dtype {mask.dtype} (bool/int8/uint8)")
    _check(tuple(mask.shape) in shapes, f"atten_mask shape {list(mask.shape)} is not one of {sorted(shapes)}")


def _check_pse(pse, query_dtype, batch, heads, q_len, k_len):
    if pse is None:
        return
    _check(pse.dtype == query_dtype, f"pse_shift dtype {pse.dtype} must equal the query dtype {query_dtype}")
    _check(tuple(pse.shape) in {(batch, heads, q_len, k_len), (1, heads, q_len, k_len)},
           f"pse_shift shape {list(pse.shape)}: (B, N, Q_S, KV_S) or (1, N, Q_S, KV_S) expected")


def _math(query, key, value, *, mask, pse, scale, layout, num_heads, pre_tokens, next_tokens):
    """softmax(scale * Q K^T + pse_shift) V with True/1 in atten_mask masked out and, with a mask
    (sparse_mode 0), only keys j in [i - pre_tokens, i + next_tokens] visible; fp32 inside."""
    q, k, v = (_bnsd(t, layout, num_heads).float() for t in (query, key, value))
    _check(q.shape[1] == num_heads, f"num_heads={num_heads} but the query has {q.shape[1]} heads")
    scores = torch.einsum("bnqd,bnkd->bnqk", q, k) * scale
    if pse is not None:
        scores = scores + pse.float()
    if mask is not None:
        masked = mask.bool()
        masked = masked[:, None] if masked.dim() == 3 else masked
        i = torch.arange(q.shape[2])[:, None]
        j = torch.arange(k.shape[2])[None, :]
        outside_band = (j < i - pre_tokens) | (j > i + next_tokens)
        scores = scores.masked_fill(masked | outside_band, float("-inf"))
    out = torch.einsum("bnqk,bnkd->bnqd", scores.softmax(dim=-1), v).to(query.dtype)
    return _from_bnsd(out, layout)


def _shape_bnsd(query, layout, num_heads):
    if layout in ("BNSD", "BNSD_BSND"):
        return tuple(query.shape)
    if layout == "BSND":
        b, s, n, d = query.shape
        return b, n, s, d
    b, s, h = query.shape
    return b, num_heads, s, h // num_heads


def prompt_flash_attention(query, key, value, *, padding_mask=None, atten_mask=None, pse_shift=None,
                           actual_seq_lengths=None, num_heads=1, scale_value=1.0, pre_tokens=NO_LIMIT,
                           next_tokens=0, input_layout="BSH", num_key_value_heads=0, actual_seq_lengths_kv=None,
                           sparse_mode=0, **quant):
    chip = _active()
    chip.calls["npu_prompt_flash_attention"] += 1
    _check(chip.inference_card or chip.a2_or_a3, "npu_prompt_flash_attention is documented for A2/A3 and Atlas "
                                                  "inference cards only")
    dtypes = (torch.float16,) if chip.inference_card else (torch.float16, torch.bfloat16, torch.int8)
    _check(query.dtype in dtypes and key.dtype == query.dtype == value.dtype,
           f"query/key/value dtype {query.dtype}/{key.dtype}/{value.dtype}: this chip takes {dtypes}")
    _check_contiguous(query=query, key=key, value=value, atten_mask=atten_mask, pse_shift=pse_shift)
    batch, heads, q_len, head_dim = _shape_bnsd(query, input_layout, num_heads)
    k_len = _shape_bnsd(key, input_layout, num_heads)[2]
    if chip.inference_card:
        _check(pse_shift is None, "pse_shift is not supported on Atlas inference cards (暂不支持该参数)")
        _check(batch <= 128 and heads <= 256 and max(q_len, k_len) <= 65535 and head_dim <= 512,
               f"B={batch} N={heads} S={max(q_len, k_len)} D={head_dim}: limits are B<=128, N<=256, S<=65535, D<=512")
        _check(pre_tokens == NO_LIMIT, f"pre_tokens={pre_tokens}: only 2147483647 is supported")
        _check(next_tokens in (0, NO_LIMIT), f"next_tokens={next_tokens}: only 0 and 2147483647 are supported")
        _check(actual_seq_lengths is None and actual_seq_lengths_kv is None and sparse_mode == 0
               and num_key_value_heads == 0, "actual_seq_lengths(_kv), sparse_mode and GQA are not supported")
    _check(all(v is None for v in quant.values()), "quantisation arguments are not used by this stand-in")
    _check_mask(atten_mask, batch, q_len, k_len,
                {(q_len, k_len), (batch, q_len, k_len), (1, q_len, k_len), (batch, 1, q_len, k_len), (1, 1, q_len, k_len)})
    _check_pse(pse_shift, query.dtype, batch, heads, q_len, k_len)
    if atten_mask is None:  # sparse_mode 0 without a mask ignores the token limits
        pre_tokens = next_tokens = NO_LIMIT
    return _math(query, key, value, mask=atten_mask, pse=pse_shift, scale=scale_value, layout=input_layout,
                 num_heads=num_heads, pre_tokens=pre_tokens, next_tokens=next_tokens)


def fused_infer_attention_score(query, key, value, *, pse_shift=None, atten_mask=None, num_heads=1, scale=1.0,
                                pre_tokens=NO_LIMIT, next_tokens=NO_LIMIT, input_layout="BSH", num_key_value_heads=0,
                                sparse_mode=0, inner_precise=0, softmax_lse_flag=False, **unused):
    chip = _active()
    chip.calls["npu_fused_infer_attention_score"] += 1
    _check(chip.a2_or_a3, "npu_fused_infer_attention_score is documented for Atlas A2/A3 only")
    _check(query.dtype in (torch.float16, torch.bfloat16) and key.dtype == query.dtype == value.dtype,
           f"query/key/value dtype {query.dtype}/{key.dtype}/{value.dtype}: float16 or bfloat16")
    _check_contiguous(query=query, key=key, value=value, atten_mask=atten_mask, pse_shift=pse_shift)
    _check(all(v is None or v == 0 or v is False for v in unused.values()), f"unsupported arguments {unused}")
    batch, heads, q_len, head_dim = _shape_bnsd(query, input_layout, num_heads)
    k_len = _shape_bnsd(key, input_layout, num_heads)[2]
    _check(input_layout != "BNSD_BSND" or q_len > 1, "BNSD_BSND needs Q_S > 1")
    _check(batch <= 65536 and heads <= 256 and head_dim <= 512, f"B={batch} N={heads} D={head_dim} over the limits")
    _check(q_len == 1 or head_dim % 16 == 0, f"D={head_dim}: float16/bfloat16 inputs need D aligned to 16")
    _check(sparse_mode in (0, 1), f"sparse_mode={sparse_mode} needs an optimised 2048x2048 mask")
    shapes = {(1, q_len, k_len), (batch, 1, q_len, k_len), (1, 1, q_len, k_len)}
    _check_mask(atten_mask, batch, q_len, k_len, shapes | ({(q_len, k_len)} if q_len > 1 else set()))
    _check_pse(pse_shift, query.dtype, batch, heads, q_len, k_len)
    if atten_mask is None:
        pre_tokens = next_tokens = NO_LIMIT
    out = _math(query, key, value, mask=atten_mask, pse=pse_shift, scale=scale, layout=input_layout,
                num_heads=num_heads, pre_tokens=pre_tokens, next_tokens=next_tokens)
    return out, torch.zeros(0, dtype=torch.float32)


def _elementwise_dtypes(chip: StandIn):
    return (torch.float16, torch.float32) if chip.inference_card else (torch.float16, torch.bfloat16, torch.float32)


def gelu(x, *, approximate="none"):
    chip = _active()
    chip.calls["npu_gelu"] += 1
    _check(x.dtype in _elementwise_dtypes(chip), f"npu_gelu dtype {x.dtype}")
    _check(approximate in ("none", "tanh"), f"approximate={approximate!r}")
    return torch.nn.functional.gelu(x.float(), approximate=approximate).to(x.dtype)


def add_layer_norm(x1, x2, gamma, beta, epsilon=1e-5, additional_output=False):
    chip = _active()
    chip.calls["npu_add_layer_norm"] += 1
    for name, tensor in (("x1", x1), ("x2", x2), ("gamma", gamma), ("beta", beta)):
        _check(tensor.dtype in _elementwise_dtypes(chip), f"npu_add_layer_norm {name} dtype {tensor.dtype}")
    summed = (x1.float() + x2.float())
    dims = tuple(range(x1.dim() - gamma.dim(), x1.dim()))
    mean = summed.mean(dim=dims, keepdim=True)
    rstd = torch.rsqrt(summed.var(dim=dims, unbiased=False, keepdim=True) + epsilon)
    y = ((summed - mean) * rstd * gamma.float() + beta.float()).to(x1.dtype)
    return y, mean, rstd, summed.to(x1.dtype)


# ---- fake kernels, as the wheel's meta registrations --------------------------------------------------


def _attention_out_like(query, input_layout):
    if input_layout == "BNSD_BSND":
        b, n, s, d = query.shape
        return query.new_empty((b, s, n, d))
    return torch.empty_like(query)


def prompt_flash_attention_fake(query, key, value, *, input_layout="BSH", **unused):
    return _attention_out_like(query, input_layout)


def fused_infer_attention_score_fake(query, key, value, *, input_layout="BSH", **unused):
    return _attention_out_like(query, input_layout), query.new_empty((0,), dtype=torch.float32)


def add_layer_norm_fake(x1, x2, gamma, beta, epsilon=1e-5, additional_output=False):
    stats = [x1.shape[i] if i < x1.dim() - gamma.dim() else 1 for i in range(x1.dim())]
    return (torch.empty_like(x1), x1.new_empty(stats, dtype=torch.float32), x1.new_empty(stats, dtype=torch.float32),
            torch.empty_like(x1))


KERNELS = {
    "npu_prompt_flash_attention": (prompt_flash_attention, prompt_flash_attention_fake),
    "npu_fused_infer_attention_score": (fused_infer_attention_score, fused_infer_attention_score_fake),
    "npu_gelu": (gelu, lambda x, *, approximate="none": torch.empty_like(x)),
    "npu_add_layer_norm": (add_layer_norm, add_layer_norm_fake),
}
_LIBRARY = None


def _register_ops():
    """torch.library registrations are process-wide: done once; the kernels consult ACTIVE."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    _LIBRARY = torch.library.Library("npu", "DEF")
    for name, schema in SCHEMAS.items():
        kernel, fake = KERNELS[name]
        _LIBRARY.define(schema)
        _LIBRARY.impl(name, kernel, "CPU")
        torch.library.register_fake(f"npu::{name}", fake, lib=_LIBRARY)


# ---- the device and the compiler ------------------------------------------------------------------------


def _device_module(state: StandIn, torch_npu):
    npu = types.ModuleType("torch.npu")

    def get_device_name(device=None):
        return torch_npu._C._npu_getDeviceName()  # a C builtin, as in torch_npu

    npu.get_device_name = get_device_name
    npu.is_available = lambda: True
    npu.device_count = lambda: 1
    npu.set_device = lambda device: None
    npu.synchronize = lambda device=None: None
    npu.is_bf16_supported = lambda: not state.inference_card
    return npu


def _torchair_modules(state: StandIn):
    torchair = types.ModuleType("torchair")
    configs = types.ModuleType("torchair.configs")
    compiler_config = types.ModuleType("torchair.configs.compiler_config")

    class CompilerConfig:
        """torchair 2.14's options that compile_model sets, with their defaults and accepted values."""
        MODES = ("max-autotune", "reduce-overhead", "npugraph_ex")

        def __init__(self):
            self._mode = "max-autotune"
            self.experimental_config = types.SimpleNamespace(frozen_parameter=False)
            self.debug = types.SimpleNamespace(aclgraph=types.SimpleNamespace(enable_output_clone=False))

        @property
        def mode(self):
            return self._mode

        @mode.setter
        def mode(self, value):
            if value not in self.MODES:
                raise ValueError(f"mode must be one of {self.MODES}, got {value!r}")
            self._mode = value

    def get_npu_backend(compiler_config=None):
        def backend(gm, example_inputs):
            state.graphs.append(gm)
            state.compiler_configs.append(compiler_config)
            return gm.forward  # the real backend hands the graph to GE here
        return backend

    compiler_config.CompilerConfig = CompilerConfig
    torchair.get_npu_backend = get_npu_backend
    torchair.CompilerConfig = CompilerConfig
    torchair.configs = configs
    configs.compiler_config = compiler_config
    return {"torchair": torchair, "torchair.configs": configs, "torchair.configs.compiler_config": compiler_config}


def install(monkeypatch, chip: str) -> StandIn:
    """Make `import torch_npu`, `torch.npu`, `import torchair` and `torch.ops.npu.*` behave as on `chip`."""
    global ACTIVE
    from npu_models.runtime import device as device_module

    _register_ops()
    import tests.npu_standin_quant  # noqa: F401  (registers the int8 ops: npu_quant_matmul, ...)
    state = StandIn(chip)
    torch_npu = types.ModuleType("torch_npu")
    torch_npu._C = types.ModuleType("torch_npu._C")
    torch_npu._C._npu_getDeviceName = itertools.repeat(chip).__next__  # C-implemented: Dynamo cannot trace it
    for name in SCHEMAS:
        setattr(torch_npu, name, getattr(torch.ops.npu, name))
    monkeypatch.setitem(sys.modules, "torch_npu", torch_npu)
    for name, module in _torchair_modules(state).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch, "npu", _device_module(state, torch_npu), raising=False)
    monkeypatch.setattr(sys.modules[__name__], "ACTIVE", state)
    device_module.import_torch_npu.cache_clear()
    return state


NPU0 = types.SimpleNamespace(type="npu", index=0)  # torch.device("npu") parses only with the real torch_npu
CHIPS = {"310P": ("Ascend310P3", torch.float16), "910B": ("Ascend910B2", torch.bfloat16)}
