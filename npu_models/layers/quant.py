"""The quantized linear layer: int8 weights with their scales, in place of an nn.Linear."""
from dataclasses import replace

import torch
from torch import nn

from npu_kernels import PORTABLE
from npu_kernels.quant_matmul import (SCHEMES, QuantParams, activation_qparams, ascend_takes_nz_weight,
                                      dequantized_bias, prepare_quant_params, quant_bias_and_deq_scale, quant_linear,
                                      quantize_weight, unsupported_reason)
from npu_models.errors import UserError


class QuantLinear(nn.Module):
    """y = x W^T + b with W int8 per output channel (`weight`, `weight_scale`), for one of npu_kernels.quant_matmul's
    schemes; w8a8 also holds the calibrated per-tensor `input_scale` and int8 `input_offset`.

    Those are the layer's state (buffers, saved with the model). The constants a backend derives from them
    (deq_scale, quant_bias) are computed by `prepare_for_inference` for the layer's `kernel_plan`: the runtime
    sets the plan, then prepares (runtime.prepare_model).

    `weight` keeps its logical [N, K] meaning wherever it lives; `weight_blocked` is set by the runtime when it
    stores it in a blocked device layout (FRACTAL_NZ on the 310P: runtime.settings), where a range of its rows is
    no tensor the int8 kernel takes: `forward(x, rows)` then computes every output feature and keeps `rows`.
    """

    def __init__(self, in_features: int, out_features: int, scheme: str, bias: bool = True):
        super().__init__()
        if scheme not in SCHEMES:
            raise UserError(f"unknown quantization scheme {scheme!r}: use one of {', '.join(SCHEMES)}.")
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        self.kernel_plan = PORTABLE
        self.weight_blocked = False
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        static = scheme == "w8a8"
        self.register_buffer("input_scale", torch.ones(1) if static else None)
        self.register_buffer("input_offset", torch.zeros(1, dtype=torch.int8) if static else None)
        # The backend's constants (prepare_for_inference): they follow the layer's device, but are not its state.
        self.register_buffer("deq_scale", None, persistent=False)
        self.register_buffer("quant_bias", None, persistent=False)

    @classmethod
    @torch.no_grad()
    def from_float(cls, linear: nn.Linear, scheme: str, input_range: tuple[float, float] | None = None,
                   bias: torch.Tensor | None = None) -> "QuantLinear":
        """`linear` quantized; `input_range` (low, high) is the calibrated range of its input (w8a8 only); `bias`
        replaces the layer's own (a fused projection whose bias its owner assembles)."""
        bias = linear.bias if bias is None else bias
        layer = cls(linear.in_features, linear.out_features, scheme, bias=bias is not None)
        layer = layer.to(linear.weight.device)
        weight, scale = quantize_weight(linear.weight)
        layer.weight.copy_(weight)
        layer.weight_scale = scale.to(linear.weight.dtype)
        if bias is not None:
            layer.bias = bias.detach().clone().to(linear.weight.dtype)
        if scheme == "w8a8":
            if input_range is None:
                raise ValueError("w8a8 needs the calibrated input range of the layer")
            input_scale, input_offset = activation_qparams(*input_range)
            layer.input_scale = input_scale.to(linear.weight.device, linear.weight.dtype)
            layer.input_offset = input_offset.to(linear.weight.device)
            quant_bias_and_deq_scale(layer.params())  # refuses a bias the int32 quant_bias cannot hold, now
            if layer.bias is not None:  # the bias as quant_bias holds it: what the kernels add and the file stores
                layer.bias = dequantized_bias(layer.state(), scheme)
        return layer

    def matmul_bias(self) -> torch.Tensor | None:
        """The bias the int8 kernel adds (a row-parallel part adds its own after the all-reduce instead)."""
        return self.bias

    def state(self) -> QuantParams:
        """The layer's tensors as the kernel's math sees them, without the derived constants."""
        return QuantParams(self.weight, self.weight_scale, self.matmul_bias(), self.input_scale, self.input_offset)

    def params(self) -> QuantParams:
        return replace(self.state(), deq_scale=self.deq_scale, quant_bias=self.quant_bias)

    def prepare_for_inference(self) -> None:
        """Derive the backend's constants for `kernel_plan` from the layer's state, where it lives now."""
        reason = unsupported_reason(self.scheme, self.kernel_plan)
        if reason:
            raise UserError(f"this device cannot run the model as quantized: {reason}.")
        prepared = prepare_quant_params(self.state(), self.scheme, self.kernel_plan)
        self.deq_scale, self.quant_bias = prepared.deq_scale, prepared.quant_bias

    def store_weights_blocked(self, cast) -> None:
        """The runtime's hook for a chip that wants weights in its blocked layout (`cast`: FRACTAL_NZ on the
        310P): the int8 weight is cast only where this layer's kernel takes it so."""
        if ascend_takes_nz_weight(self.scheme, self.state(), self.kernel_plan):
            self.weight = cast(self.weight)  # [N, K], contiguous
            self.weight_blocked = True

    def forward(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """x [..., in_features] -> [..., out_features]; `rows`: only those output features (cls_only's q rows)."""
        if rows is not None and self.weight_blocked:
            return quant_linear(x, self.params(), self.scheme, self.kernel_plan)[..., rows]
        params = self.params() if rows is None else self.params().rows(rows)
        return quant_linear(x, params, self.scheme, self.kernel_plan)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"
