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
- a fused op runs only on the chips its doc page names (DOCUMENTED_CHIPS, read from the wheel's
  `_op_plugin_docs.py` and op-plugin's docs/context pages), whatever our plan says;
- torchair's backend records the graphs it is handed (and the CompilerConfig) and runs them: the real
  one would hand them to GE here; `torchair.inference.cache_compile` takes bound nn.Module methods only, as
  the real one, and records its call (cache_dir, dynamic);
- NPUGraph (`torch_npu/npu/graphs.py`): `torch.npu.graph(g, pool=...)` captures on a side stream; the
  capture records every aten op with the tensors it reads and writes and refuses what waits for the host
  (.item(), .cpu(), nonzero, ...); replay() re-runs the recorded ops into the same output tensors, as a real
  replay writes into the captured memory;
- `npu_format_cast` (schema from the wheel) returns a contiguous copy and records the format on its storage,
  where torch_npu keeps it (`get_npu_format` reads it back; `weight_format` tells an op whether a weight is
  that whole cast tensor, its transpose, or a slice of it), and `set_compile_mode` records jit_compile;
- ops run inside torchair's graph know it (`in_torchair_graph`): some take an input format only there.

Tensors stay on the CPU: the stand-in checks our side of each call, not Ascend numerics.
"""
import collections
import itertools
import sys
import types

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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
    "npu_format_cast": (
        "npu_format_cast(Tensor self, int acl_format, *, int? customize_dtype=None, int? input_dtype=None) -> Tensor"),
}

# The chip families each fused op's doc page names ("支持的型号" / "产品支持情况"): "inference" is the Atlas
# inference series (Atlas 推理系列(加速卡)产品: 300I / 310P), A2 and A3 the Atlas A2 / A3 series.
DOCUMENTED_CHIPS = {
    "npu_prompt_flash_attention": {"inference", "A2", "A3"},  # _op_plugin_docs.py; op-plugin page
    "npu_fused_infer_attention_score": {"A2", "A3"},          # _op_plugin_docs.py
    "npu_gelu": {"inference", "A2", "training"},              # op-plugin docs/context/torch_npu-npu_gelu.md
    "npu_add_layer_norm": set(),                              # no doc page anywhere
}
# torch_npu.Format (torch_npu/npu/_format.py): ND is the base format of a 2-D tensor, FRACTAL_NZ 29.
FORMAT_ND, FORMAT_FRACTAL_NZ = 2, 29
FORMATS = {-1, 0, 1, 2, 3, 4, 12, 16, 27, 29, 30, 32, 33, 35, 47, 50, 51, 52, 53, 54}


class AscendContractError(RuntimeError):
    """A call the real op documents as unsupported."""


class StandIn:
    """The active chip, and what the fake device and compiler saw."""

    def __init__(self, chip: str):
        self.chip = chip
        self.calls = collections.Counter()      # op name -> number of calls
        self.graphs = []                        # FX graphs handed to the torchair backend
        self.compiler_configs = []
        self.cache_compiles = []                # torchair.inference.cache_compile calls: func, cache_dir, dynamic
        self.captures = []                      # NPUGraphs captured, in order
        self.replays = 0
        self.formats = {}                       # storage data_ptr -> (ACL format, the tensor, kept alive)
        self.jit_compile = None                 # what set_compile_mode last set
        self.in_torchair_graph = 0              # > 0 while a graph handed to torchair's backend runs
        self.default_stream = Stream()
        self.current_stream = self.default_stream

    @property
    def inference_card(self) -> bool:           # Atlas 300I / 310P ("Atlas 推理系列加速卡产品")
        return "Ascend310P" in self.chip

    @property
    def family(self) -> str | None:
        if self.inference_card:
            return "inference"
        return "A2" if self.chip.startswith("Ascend910B") else "A3" if self.chip.startswith("Ascend910_93") else None

    def npu_format(self, tensor) -> int:
        return self.formats.get(tensor.untyped_storage().data_ptr(), (FORMAT_ND,))[0]

    def weight_format(self, weight) -> tuple[int, str]:
        """(its storage's format, how `weight` views the tensor npu_format_cast returned: "whole", "transposed"
        (its 2-D transpose) or "part"); (ND, "whole") for a tensor never cast."""
        acl_format, cast = self.formats.get(weight.untyped_storage().data_ptr(), (FORMAT_ND, None))
        if cast is None:
            return acl_format, "whole"

        def same(view):
            return (weight.storage_offset() == view.storage_offset() and weight.shape == view.shape
                    and weight.stride() == view.stride())
        return acl_format, "whole" if same(cast) else "transposed" if cast.dim() == 2 and same(cast.t()) else "part"

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


def _called(name: str) -> StandIn:
    """Count a call of a fused op, refused where its doc does not name the chip."""
    chip = _active()
    chip.calls[name] += 1
    _check(chip.family in DOCUMENTED_CHIPS[name], f"{name}: its doc does not name this chip "
           f"(documented for {sorted(DOCUMENTED_CHIPS[name]) or 'no chip at all'})")
    return chip


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
    chip = _called("npu_prompt_flash_attention")
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
    chip = _called("npu_fused_infer_attention_score")
    _check(query.dtype in (torch.float16, torch.bfloat16) and key.dtype == query.dtype == value.dtype,
           f"query/key/value dtype {query.dtype}/{key.dtype}/{value.dtype}: float16 or bfloat16")
    _check_contiguous(query=query, key=key, value=value, atten_mask=atten_mask, pse_shift=pse_shift)
    _check(all(v is None or v == 0 or v is False for v in unused.values()), f"unsupported arguments {unused}")
    batch, heads, q_len, head_dim = _shape_bnsd(query, input_layout, num_heads)
    k_len = _shape_bnsd(key, input_layout, num_heads)[2]
    _check(input_layout != "BNSD_BSND" or q_len > 1, "BNSD_BSND needs Q_S > 1")
    _check(batch <= 65536 and heads <= 256 and head_dim <= 512, f"B={batch} N={heads} D={head_dim} over the limits")
    # "当Q_S大于1时 ... S支持小于等于20971520(20M)"; "当Q_S等于1时 ... 支持S轴小于等于262144"
    _check(q_len == 1 or max(q_len, k_len) <= 20971520, f"S={max(q_len, k_len)}: with Q_S > 1, S <= 20971520")
    _check(q_len > 1 or k_len <= 262144, f"S={k_len}: with Q_S = 1, S <= 262144")
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
    chip = _called("npu_gelu")
    _check(x.dtype in _elementwise_dtypes(chip), f"npu_gelu dtype {x.dtype}")
    _check(approximate in ("none", "tanh"), f"approximate={approximate!r}")
    return torch.nn.functional.gelu(x.float(), approximate=approximate).to(x.dtype)


def add_layer_norm(x1, x2, gamma, beta, epsilon=1e-5, additional_output=False):
    chip = _called("npu_add_layer_norm")
    for name, tensor in (("x1", x1), ("x2", x2), ("gamma", gamma), ("beta", beta)):
        _check(tensor.dtype in _elementwise_dtypes(chip), f"npu_add_layer_norm {name} dtype {tensor.dtype}")
    summed = (x1.float() + x2.float())
    dims = tuple(range(x1.dim() - gamma.dim(), x1.dim()))
    mean = summed.mean(dim=dims, keepdim=True)
    rstd = torch.rsqrt(summed.var(dim=dims, unbiased=False, keepdim=True) + epsilon)
    y = ((summed - mean) * rstd * gamma.float() + beta.float()).to(x1.dtype)
    return y, mean, rstd, summed.to(x1.dtype)


def format_cast(x, acl_format, *, customize_dtype=None, input_dtype=None):
    """The same values in another storage format; the format lives on the storage, as in torch_npu."""
    chip = _active()
    chip.calls["npu_format_cast"] += 1
    _check(acl_format in FORMATS, f"npu_format_cast: {acl_format} is not a torch_npu.Format")
    _check(customize_dtype is None and input_dtype is None, "customize_dtype/input_dtype are not used by this stand-in")
    out = x.clone(memory_format=torch.contiguous_format)  # the format lays out the logical shape, not x's strides
    chip.formats[out.untyped_storage().data_ptr()] = (acl_format, out)
    return out


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
    "npu_format_cast": (format_cast,
                        lambda x, acl_format, **unused: torch.empty_like(x, memory_format=torch.contiguous_format)),
}
_LIBRARY = None


def _register_ops():
    """torch.library registrations are process-wide: done once; the kernels consult ACTIVE."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    _LIBRARY = define_ops(torch.library.Library("npu", "DEF"), SCHEMAS, KERNELS)


def define_ops(library, schemas: dict, kernels: dict):
    """Each op of `schemas` in `library` with its CPU kernel and fake (meta) kernel from `kernels`."""
    for name, schema in schemas.items():
        kernel, fake = kernels[name]
        library.define(schema)
        library.impl(name, kernel, "CPU")
        torch.library.register_fake(f"npu::{name}", fake, lib=library)
    return library


# ---- graph capture (torch_npu/npu/graphs.py) -------------------------------------------------------------


class Stream:
    def __init__(self, device=None, priority=0):
        pass

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass


class StreamContext:
    """torch.npu.stream(s): s is the current stream inside."""

    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        state = _active()
        self.previous, state.current_stream = state.current_stream, self.stream

    def __exit__(self, *exc):
        _active().current_stream = self.previous


class PoolHandle:
    """The opaque token torch.npu.graph_pool_handle() returns."""


# Operators that read a tensor's value on the host, or whose output shape depends on values: each waits for
# the device, which a capture cannot do (the capture error names "CPU ops" and "dynamic control flow on
# tensor values" as common causes, npu/graphs.py).
HOST_SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
                 "aten::unique_dim", "aten::unique_consecutive", "aten::equal", "aten::is_nonzero"}
HOST_COPIES = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist}


def _to_host(args, kwargs) -> bool:
    """Whether Tensor.to's arguments name the CPU."""
    return any((isinstance(t, torch.device) and t.type == "cpu") or (isinstance(t, str) and t.split(":")[0] == "cpu")
               for t in [*args, kwargs.get("device")])


def _refuse_in_capture(recorder, what: str):
    recorder.failed = True
    raise AscendContractError(f"{_active().chip}: {what} while an NPUGraph is being captured")


class _HostCopyGuard(TorchFunctionMode):
    """Refuses copies to the host (they never reach the dispatcher for these CPU-held tensors)."""

    def __init__(self, recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_COPIES or (func is torch.Tensor.to and _to_host(args[1:], kwargs)):
            _refuse_in_capture(self.recorder, f"Tensor.{func.__name__} copies to the host")
        return func(*args, **kwargs)


class _Recorder(TorchDispatchMode):
    """Records every operator a capture runs, with the tensors it reads and writes; refuses host syncs."""

    def __init__(self):
        super().__init__()
        self.records, self.failed = [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._schema.name in HOST_SYNC_OPS:
            _refuse_in_capture(self, f"{func._schema.name} waits for the host")
        out = func(*args, **kwargs)
        if not func.is_view:  # a view keeps aliasing its base, which the replay rewrites in place
            self.records.append((func, args, kwargs, out))
        return out


class NPUGraph:
    """torch.npu.NPUGraph: capture_begin/capture_end around the work, replay(), pool(), reset()."""

    def __init__(self):
        self._records, self._modes, self._pool = None, None, None

    def capture_begin(self, pool=None, capture_error_mode="global"):
        state = _active()
        _check(self._records is None and self._modes is None, "capture_begin on an NPUGraph holding a capture")
        _check(state.current_stream is not state.default_stream, "capture on the default stream")
        _check(pool is None or isinstance(pool, PoolHandle), f"pool {pool!r} is not a graph pool token")
        self._pool = pool if pool is not None else PoolHandle()
        recorder = _Recorder()
        self._modes = (_HostCopyGuard(recorder), recorder)
        for mode in self._modes:
            mode.__enter__()

    def capture_end(self):
        guard, recorder = self._modes
        recorder.__exit__(None, None, None)
        guard.__exit__(None, None, None)
        self._modes = None
        if not recorder.failed:
            self._records = recorder.records
            _active().captures.append(self)

    def replay(self):
        _check(self._records is not None, "replay() of an NPUGraph without a capture")
        _active().replays += 1
        for func, args, kwargs, out in self._records:
            fresh = func(*args, **kwargs)
            for old, new in zip(tree_leaves(out), tree_leaves(fresh)):
                if isinstance(old, torch.Tensor) and old is not new:
                    old.copy_(new)  # into the captured output's memory

    def pool(self):
        return self._pool

    def reset(self):
        self._records = None


class graph:  # noqa: N801  (torch.npu.graph is a class)
    """torch.npu.graph(npu_graph, pool=None, stream=None, ...): captures the work inside on a side stream."""

    def __init__(self, npu_graph, pool=None, stream=None, auto_dispatch_capture=False, capture_error_mode="global"):
        self.npu_graph, self.pool = npu_graph, pool
        self.stream_context = StreamContext(stream if stream is not None else Stream())

    def __enter__(self):
        self.stream_context.__enter__()
        self.npu_graph.capture_begin(*(() if self.pool is None else (self.pool,)))

    def __exit__(self, *exc):
        self.npu_graph.capture_end()
        self.stream_context.__exit__(*exc)


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
    npu.NPUGraph, npu.graph, npu.graph_pool_handle = NPUGraph, graph, PoolHandle
    npu.Stream, npu.stream, npu.current_stream = Stream, StreamContext, lambda device=None: state.current_stream

    def set_compile_mode(jit_compile=False):
        state.jit_compile = jit_compile

    npu.set_compile_mode = set_compile_mode
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

            def run_graph(*args):  # the real backend hands the graph to GE here
                state.in_torchair_graph += 1
                try:
                    return gm.forward(*args)
                finally:
                    state.in_torchair_graph -= 1
            return run_graph
        return backend

    def cache_compile(func, *, config=None, dynamic=True, cache_dir=None, **options):
        """torchair.inference.cache_compile (inference/_cache_compiler.py): a bound method of an nn.Module only;
        records the call and compiles through the backend. (The real one keeps the graph in cache_dir and loads
        it, without guards, in the next process.)"""
        if not isinstance(func, types.MethodType) or not isinstance(func.__self__, torch.nn.Module):
            raise ValueError(f"Only torch.nn.Module method can be cached now, got {func}")
        state.cache_compiles.append({"func": func, "cache_dir": cache_dir, "dynamic": dynamic, "config": config})
        return torch.compile(func, backend=get_npu_backend(compiler_config=config), fullgraph=True, dynamic=dynamic)

    inference = types.ModuleType("torchair.inference")
    inference.cache_compile = cache_compile
    torchair.inference = inference
    compiler_config.CompilerConfig = CompilerConfig
    torchair.get_npu_backend = get_npu_backend
    torchair.CompilerConfig = CompilerConfig
    torchair.configs = configs
    configs.compiler_config = compiler_config
    return {"torchair": torchair, "torchair.configs": configs, "torchair.configs.compiler_config": compiler_config,
            "torchair.inference": inference}


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
    torch_npu.get_npu_format = state.npu_format
    torch_npu.npu = _device_module(state, torch_npu)
    monkeypatch.setitem(sys.modules, "torch_npu", torch_npu)
    for name, module in _torchair_modules(state).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch, "npu", torch_npu.npu, raising=False)
    monkeypatch.setattr(sys.modules[__name__], "ACTIVE", state)
    device_module.import_torch_npu.cache_clear()
    return state


NPU0 = types.SimpleNamespace(type="npu", index=0)  # torch.device("npu") parses only with the real torch_npu
CHIPS = {"310P": ("Ascend310P3", torch.float16), "910B": ("Ascend910B2", torch.bfloat16)}
