"""Every fused operator on a plan's backend against its eager reference, on small random inputs: what
`python -m npu_models.doctor` runs on the user's chip. Each case is (name, plan's output, eager output)."""
import torch

from npu_kernels.activation import eager_gelu, gelu
from npu_kernels.attention_backends import attention, eager_attention
from npu_kernels.norm import add_layer_norm, eager_add_layer_norm
from npu_kernels.plan import KernelPlan

# batch, heads, query/key length, head dim: BERT-base's head dim at a short padded sentence
SHAPE = (2, 4, 24, 64)


def kernel_cases(plan: KernelPlan, device: torch.device, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    batch, heads, length, head_dim = SHAPE
    q, k, v = rand(*SHAPE), rand(*SHAPE), rand(*SHAPE)
    key_mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    key_mask[1, ..., length // 2:] = False  # the second sentence padded
    key_mask = key_mask.to(device)
    x, residual = rand(batch, length, heads * head_dim), rand(batch, length, heads * head_dim)
    weight, bias = rand(heads * head_dim), rand(heads * head_dim)
    return [
        (f"attention ({plan.attention})", attention(q, k, v, plan=plan), eager_attention(q, k, v)),
        (f"attention+mask ({plan.attention})", attention(q, k, v, key_mask, plan=plan), eager_attention(q, k, v, key_mask)),
        (f"gelu ({plan.gelu})", gelu(x, plan), eager_gelu(x)),
        (f"add_layer_norm ({plan.add_layer_norm})", add_layer_norm(x, residual, weight, bias, 1e-12, plan),
         eager_add_layer_norm(x, residual, weight, bias, 1e-12)),
    ]
