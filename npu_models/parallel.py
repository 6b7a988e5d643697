"""Tensor parallelism: the process group from torchrun's environment, and the one function that applies a
model's plan (declared as data in its spec, npu_models/models/<family>/).

Megatron's scheme: attention splits by heads (q/k/v rows of the rank's heads, the output projection by its
input columns) and the MLP by its hidden units (fc1 rows, fc2 input columns); each block's two row-parallel
linears end in an all-reduce, after which their bias is added once. Everything else is replicated. Heads
are shared out as evenly as possible (3 heads over 2 ranks: 1 + 2), so every fixture splits; a layer with
fewer heads than ranks is refused by name. The all-reduce is a functional collective, which torch.compile
traces, so graph mode works under TP. This module is the only one that knows ranks.

Quantized layers (npu_models/quantization.py) split like their float ones: the whole model is quantized, then
cut. Column-parallel parts keep their rows' int8 weights, per-channel scales and bias; row-parallel parts
(RowParallelQuantLinear) keep the whole input's activation scale and offset, cut the weight's columns, and add
the bias once after the all-reduce.

Data parallelism: more processes than --tp form tp x dp; each data-parallel rank evaluates its share of
the batches and gathers Python objects (prediction records, CPU tensors) over a gloo group of the whole world.
"""
import atexit
import datetime
import fnmatch
import gc
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from npu_kernels.quant_matmul import dequantized_bias
from npu_models.errors import UserError, arg
from npu_models.layers.quant import QuantLinear

BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}
# A rank that dies makes the others fail within this many seconds instead of hanging.
TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("NPU_MODELS_DIST_TIMEOUT", "300")))
# How long a rank other than 0 that meets an error waits for rank 0 to report it and end the job.
ERROR_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in its tensor-parallel group."""
    rank: int
    size: int
    group: object = None  # torch.distributed ProcessGroup; None when size is 1

    def share(self, total: int) -> slice:
        """This rank's part of `total` units (heads, hidden units), as even as the division allows."""
        return slice(total * self.rank // self.size, total * (self.rank + 1) // self.size)


SINGLE = TensorParallel(0, 1)
# The places init_tensor_parallel handed out (a model's split layers hold one): release_process_groups lets go
# of their groups, so that a model still alive at exit cannot keep a group's threads into interpreter teardown.
JOINED: list[TensorParallel] = []


def init_tensor_parallel(tp: int, device_type: str) -> TensorParallel:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT): tensor-parallel
    groups of `tp` consecutive ranks; the world is tp x data-parallel."""
    check_world(tp)  # tp x data-parallel processes, started by torchrun
    world = world_size()
    if world == 1:
        return SINGLE
    if not dist.is_initialized():
        # torch._dynamo, which torch imports lazily (the first meta-device init, a collective), must come in
        # before the group: imported after it, it leaves gloo's threads alive past release_at_exit
        # (tests/test_parallel_exit.py; seen once torchvision, which used to import it first, went lazy)
        import torch._dynamo  # noqa: F401
        dist.init_process_group(BACKENDS.get(device_type, "gloo"), timeout=TIMEOUT)
        atexit.register(release_at_exit)  # the group is ours to end (one joined by the caller is not)
    rank = dist.get_rank()
    groups = [dist.new_group(list(range(start, start + tp)), timeout=TIMEOUT) for start in range(0, world, tp)]
    if tp == 1:
        return SINGLE
    JOINED.append(TensorParallel(rank % tp, tp, groups[rank // tp]))
    return JOINED[-1]


def release_process_groups() -> None:
    """Destroy the process groups this process joined while the interpreter is still whole. Left to
    interpreter teardown, a gloo worker thread that drops the last reference to a finished collective's tensor
    needs the GIL, Python ends that thread with pthread_exit, and the rank dies with SIGABRT ("terminate called
    without an active exception") after its work is done. A group's threads are joined when the last reference
    to it goes: torch.distributed's (destroy_process_group), the places handed out (split layers hold one), and
    any cycle (gc)."""
    for place in JOINED:
        object.__setattr__(place, "group", None)  # frozen for its users; this is the one place that lets go
    JOINED.clear()
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def release_at_exit() -> None:
    """At exit (registered when init_tensor_parallel joins the group): release the groups, unless an uncaught
    exception is ending the process: a rank that failed while its peers wait in a collective could block in
    the destruction (torchtitan destroys only after success), and exits at once as before."""
    if getattr(sys, "last_value", None) is None:  # Python sets it for the uncaught exception it just printed
        release_process_groups()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process drives the accelerator of its LOCAL_RANK."""
    if device.type in ("npu", "cuda") and "LOCAL_RANK" in os.environ:
        return torch.device(device.type, int(os.environ["LOCAL_RANK"]))
    return device


def world_size() -> int:
    """How many processes torchrun started (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def global_rank() -> int:
    """This process's rank in the whole job (torchrun's RANK before the group is joined; 0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 prints progress, warnings and errors, and writes results."""
    return global_rank() == 0


def report_error(message: str) -> None:
    """Print a command's error once for the job. Every rank usually meets the same error: rank 0 prints it,
    and its exit makes torchrun stop the others. Another rank first leaves rank 0 the time to do so (were it
    to exit at once, torchrun could stop rank 0 before it prints); still running after that, it failed alone
    and prints its own error, with its rank."""
    if not is_main_process():
        time.sleep(ERROR_GRACE_SECONDS)
        message = f"rank {global_rank()}: {message}"
    print(message, file=sys.stderr, flush=True)


# ---- data parallelism ----------------------------------------------------------------------------------
# The world is tp x dp: global rank r is tensor-parallel rank r % tp of data-parallel rank r // tp, so the tp
# ranks of one data-parallel rank hold one model together and see the same batches.


def torchrun_command(processes: int) -> str:
    """How to launch `processes` processes on one machine (torchrun's own flags, for Python and CLI alike)."""
    return f"torchrun --standalone --nproc_per_node {processes}"


def check_world(tp: int) -> None:
    """Refuse, before any work, a tensor-parallel degree below 1 or a launch whose process count is not
    tp x data-parallel ranks."""
    if tp < 1:
        raise UserError(f"{arg('tp', tp)} is no tensor-parallel degree: it must be at least 1.")
    world = world_size()
    if world == 1 and tp > 1:
        raise UserError(f"{arg('tp', tp)} needs {tp} processes: run under {torchrun_command(tp)}.")
    if world % tp:
        raise UserError(f"{world} processes for {arg('tp', tp)}: the processes are tp x data-parallel ranks; launch "
                        f"{torchrun_command(tp)} (or a multiple of it for data parallelism).")
    if world > 1 and "MASTER_ADDR" not in os.environ:
        raise UserError(f"WORLD_SIZE is {world} but torchrun did not start this process: run under "
                        f"{torchrun_command(world)}.")


def broadcast_from_main(obj=None):
    """Rank 0's `obj` on every rank of the job (what the others pass is ignored): how one process that takes the
    requests hands each batch to the ranks that hold the rest of a tensor-parallel model (npu_models.serve)."""
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


@dataclass(frozen=True)
class DataParallel:
    """This process's data-parallel rank and how many there are; `group` spans the whole world (gloo, so
    Python objects travel on the CPU whatever the accelerator's backend)."""
    rank: int
    size: int
    tp: int = 1
    group: object = None

    def share(self, batches: list) -> list:
        """This rank's batches: every size-th, from its rank, so step s of all ranks is batches
        s*size ... s*size+size-1, in the order one process would run them."""
        return batches[self.rank::self.size]

    def steps(self, num_batches: int) -> int:
        """How many batches the busiest rank runs: every rank gathers this often."""
        return -(-num_batches // self.size)

    def gather(self, value) -> list:
        """Every data-parallel rank's `value`, in rank order, on every process. A collective over the whole
        world: every process must call it as often as the others."""
        if self.size == 1:
            return [value]
        parts = [None] * (self.size * self.tp)
        dist.all_gather_object(parts, value, group=self.group)
        return parts[::self.tp]  # the tensor-parallel ranks of one data-parallel rank hold the same value


def data_parallel(tp: int) -> DataParallel:
    """This process's data-parallel place (rank = global rank // tp, size = world // tp); call it on every
    rank after the process group is joined (load_model does that)."""
    world = world_size()
    if world == tp:
        return DataParallel(0, 1, tp)
    group = dist.new_group(backend="gloo", timeout=TIMEOUT)
    return DataParallel(dist.get_rank() // tp, world // tp, tp, group)


# ---- the layers after splitting ------------------------------------------------------------------------


def all_reduce(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    from torch.distributed import _functional_collectives as funcol
    return funcol.all_reduce(x, "sum", tp.group)


class RowParallelLinear(nn.Module):
    """A linear whose input features are split over the ranks: partial products are summed across the
    group, then the (replicated) bias is added once."""

    def __init__(self, linear: nn.Linear, columns: torch.Tensor, tp: TensorParallel):
        super().__init__()
        self.tp = tp
        self.weight = nn.Parameter(linear.weight.detach()[:, columns].clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        out = all_reduce(F.linear(x, self.weight), self.tp)
        return out if self.bias is None else out + self.bias

    def store_weights_blocked(self, cast) -> None:
        """The runtime's hook for a chip that wants Linear weights in its blocked layout (FRACTAL_NZ on the 310P)."""
        with torch.no_grad():
            self.weight.data = cast(self.weight.data)


class RowParallelQuantLinear(QuantLinear):
    """A QuantLinear whose input features are split over the ranks. Every rank quantizes its columns of the
    input with the whole input's activation scale and offset (w8a8: the calibrated range, the same on every
    rank, so its int8 columns are the whole input's), multiplies them by its columns of the int8 weight and
    dequantizes; the all-reduce sums the parts, then the bias is added once. The w8a8 offset's correction
    -offset * rowsum(W) is linear in the columns: each rank's quant_bias holds its own columns' share (and no
    bias), so the parts sum to the whole. w8a8-dynamic's per-token scales are those of the rank's columns (as
    vLLM's row-parallel layers do): no collective for them, each part at least as precise as the whole's.

    The bias is the one the int8 kernel would have added (npu_kernels.quant_matmul.dequantized_bias: w8a8 rounds it
    to deq_scale units), so tp=N sums what tp=1 computes, in another order."""

    def __init__(self, layer: QuantLinear, columns: torch.Tensor, tp: TensorParallel):
        super().__init__(len(columns), layer.out_features, layer.scheme, bias=layer.bias is not None)
        self.tp = tp
        copy_quant_state(self, layer, slice(None), columns)
        self.bias = dequantized_bias(layer.state(), layer.scheme)
        if layer.deq_scale is not None:  # cut after prepare_model: derive this part's constants again
            self.prepare_for_inference()

    def matmul_bias(self) -> torch.Tensor | None:
        return None  # added once, after the all-reduce

    def forward(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        if rows is not None:
            raise ValueError("a row-parallel layer computes all its output features")
        out = all_reduce(super().forward(x), self.tp)
        return out if self.bias is None else out + self.bias


@torch.no_grad()
def copy_quant_state(part: QuantLinear, layer: QuantLinear, rows, columns) -> None:
    """`part` holds `layer`'s int8 weight at (rows, columns) and their per-channel scales; the per-tensor input
    scale and offset are the whole input's."""
    part.weight = layer.weight[rows][:, columns].clone()
    part.weight_scale = layer.weight_scale[rows].clone()
    if layer.input_scale is not None:
        part.input_scale, part.input_offset = layer.input_scale.clone(), layer.input_offset.clone()
    part.kernel_plan = layer.kernel_plan


@torch.no_grad()
def quant_rows_of(layer: QuantLinear, rows: torch.Tensor) -> QuantLinear:
    """The quantized linear restricted to some output features (column parallel): the weight's rows, their
    scales and bias; the activation's scale and offset unchanged."""
    part = QuantLinear(layer.in_features, len(rows), layer.scheme, bias=layer.bias is not None)
    copy_quant_state(part, layer, rows, slice(None))
    if layer.bias is not None:
        part.bias = layer.bias[rows].clone()
    if layer.deq_scale is not None:  # cut after prepare_model: derive this part's constants again
        part.prepare_for_inference()
    return part


def check_splittable(layer: nn.Module, path: str) -> None:
    """A layer the plan cuts must be a float nn.Linear or a QuantLinear: anything else (a layer cut already, a
    foreign quantized module) would be copied into a float Linear and lose what it is."""
    if type(layer) not in (nn.Linear, QuantLinear):
        raise UserError(f"{path} is a {type(layer).__module__}.{type(layer).__qualname__}, which tensor parallelism "
                        f"cannot cut: it cuts float nn.Linear layers and npu_models' QuantLinear, each once; quantize "
                        f"with npu_models.quantization.quantize_model (then cut the whole model), or run with tp=1.")


def column_parallel(layer: nn.Module, rows: torch.Tensor, path: str) -> nn.Module:
    check_splittable(layer, path)
    return quant_rows_of(layer, rows) if isinstance(layer, QuantLinear) else rows_of(layer, rows)


def row_parallel(layer: nn.Module, columns: torch.Tensor, tp: TensorParallel, path: str) -> nn.Module:
    check_splittable(layer, path)
    if isinstance(layer, QuantLinear):
        return RowParallelQuantLinear(layer, columns, tp)
    return RowParallelLinear(layer, columns, tp)


def rows_of(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    """The linear restricted to some output features (column parallel)."""
    part = nn.Linear(linear.in_features, len(rows), bias=linear.bias is not None, device=linear.weight.device,
                     dtype=linear.weight.dtype)
    with torch.no_grad():
        part.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            part.bias.copy_(linear.bias[rows])
    return part.requires_grad_(False)


def head_units(heads: slice, head_dim: int, parts: int, inner: int) -> torch.Tensor:
    """Indices of the rank's heads in a fused projection of `parts` stacked [inner] blocks (q, k, v)."""
    return torch.cat([torch.arange(p * inner + heads.start * head_dim, p * inner + heads.stop * head_dim)
                      for p in range(parts)])


def split_attention(attention: nn.Module, tp: TensorParallel, path: str) -> None:
    heads = attention.num_heads
    if heads < tp.size:
        raise UserError(f"{path} has {heads} attention heads, fewer than {arg('tp', tp.size)}: each rank needs at "
                        f"least one; use {arg('tp', heads)} or less.")
    mine, dim = tp.share(heads), attention.head_dim
    inner = heads * dim
    if hasattr(attention, "qkv"):
        attention.qkv = column_parallel(attention.qkv, head_units(mine, dim, 3, inner), f"{path}.qkv")
    else:
        attention.q = column_parallel(attention.q, head_units(mine, dim, 1, inner), f"{path}.q")
        attention.kv = column_parallel(attention.kv, head_units(mine, dim, 2, inner), f"{path}.kv")
    for name in ("q_bias", "v_bias"):  # BEiT/VLMo: separate q and v biases, split like q and v
        if hasattr(attention, name):
            setattr(attention, name, nn.Parameter(getattr(attention, name).detach()[head_units(mine, dim, 1, inner)],
                                                  requires_grad=False))
    attention.proj = row_parallel(attention.proj, head_units(mine, dim, 1, inner), tp, f"{path}.proj")
    attention.num_heads = mine.stop - mine.start


def split_mlp(mlp: nn.Module, tp: TensorParallel, path: str) -> None:
    units = torch.arange(mlp.fc1.out_features)[tp.share(mlp.fc1.out_features)]
    mlp.fc1 = column_parallel(mlp.fc1, units, f"{path}.fc1")
    mlp.fc2 = row_parallel(mlp.fc2, units, tp, f"{path}.fc2")


def split_head_columns(owner: nn.Module, name: str, tp: TensorParallel, heads: int, path: str) -> None:
    """A per-head table whose columns are layer-major, head-minor (VLMo's relative-position bias)."""
    table = getattr(owner, name)
    mine = tp.share(heads)
    columns = torch.cat([torch.arange(layer * heads + mine.start, layer * heads + mine.stop)
                         for layer in range(table.shape[1] // heads)])
    setattr(owner, name, nn.Parameter(table.detach()[:, columns].clone(), requires_grad=False))


def apply_plan(model: nn.Module, plan: dict[str, str], tp: TensorParallel) -> nn.Module:
    """Split `model` in place as `plan` says: {module path pattern ('*' is one name): style}, styles
    "heads" (an Attention), "mlp" (an Mlp) and "head_columns" (a parameter of per-head columns)."""
    if tp.size == 1:
        return model
    model.tensor_parallel = tp  # what per-head outputs need to be gathered (gather_heads)
    modules = dict(model.named_modules())
    parameters = dict(model.named_parameters())
    for pattern, style in plan.items():
        depth = pattern.count(".")
        if style == "head_columns":
            for path in [p for p in parameters if fnmatch.fnmatchcase(p, pattern)]:
                owner, _, name = path.rpartition(".")
                split_head_columns(modules[owner] if owner else model, name, tp, model.config.num_heads, path)
            continue
        matched = [p for p in modules if p.count(".") == depth and fnmatch.fnmatchcase(p, pattern)]
        for path in matched:
            {"heads": split_attention, "mlp": split_mlp}[style](modules[path], tp, path)
    return model


def is_cut(model: nn.Module) -> bool:
    """Whether `model` holds one rank's share of its layers (apply_plan cut it for more than one rank)."""
    return getattr(model, "tensor_parallel", SINGLE).size > 1


def gather_heads(tensor: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A per-head tensor [heads, ...] of a split model, gathered from every rank (for fixture checks)."""
    tp = getattr(model, "tensor_parallel", SINGLE)
    if tp.size == 1:
        return tensor
    parts = [None] * tp.size
    dist.all_gather_object(parts, tensor.detach().cpu(), group=tp.group)
    return torch.cat(parts).to(tensor.device)
