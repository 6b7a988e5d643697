"""The transformer feed-forward network."""
from torch import nn

from npu_kernels import PORTABLE, gelu


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.kernel_plan = PORTABLE  # set by the runtime for the device

    def forward(self, x):
        return self.fc2(gelu(self.fc1(x), self.kernel_plan))
