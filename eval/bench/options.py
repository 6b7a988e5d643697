"""What eval.bench is asked to run, as Python values (eval.bench.cli parses the command line into these)."""
from dataclasses import dataclass, field
from pathlib import Path

from eval.bench.load import LOADS
from eval.options import paths_from_strings
from npu_kernels.quant_matmul import SCHEMES
from npu_models import registry
from npu_models.errors import UserError

MODES = ("eager", "graph")
QUANT = ("none", *SCHEMES)  # "none": our float model


@dataclass
class BenchOptions:
    # registry or short name, "name/part" for one part, or "all" for every model (default: the SST-2 model)
    model: str = field(default_factory=lambda: registry.default_entry("sst2").name)
    checkpoint: Path | None = None        # official checkpoint; None: random full-size weights
    device: str = "auto"
    dtype: str = "auto"
    batch_sizes: list[int] | None = None  # None: 1, 8 and 32; 32 for the end-to-end flow
    seq_len: int = 128                    # text models: tokens per sequence
    modes: tuple[str, ...] = MODES
    no_peer: bool = False                 # time only our implementation
    tp: int = 1                           # tensor-parallel degree for ours (under torchrun); the peer runs whole
    compile_cache: Path | None = None     # graph mode's kept compiled graphs; None: the default dir; "off": none
    warmup: int = 3
    iters: int = 10
    json: Path | None = None              # the rows as a JSON list
    csv: Path | None = None               # the rows as CSV
    plot: Path | None = None              # a PNG of throughput against batch size
    end_to_end: bool = False              # SST-2 models: eval.sst2's own code path against the ModelZoo flow
    data: Path | None = None              # end-to-end: SST-2 dev.tsv; None: random words with SST-2's length mix
    quant: tuple[str, ...] = ("none",)    # ours as float ("none") and/or quantized on the fly (whole, then cut for tp)
    loads: tuple[str, ...] = ("idle",)    # time each row on the machine as it is, and/or with every core kept busy

    def __post_init__(self):
        if self.batch_sizes is None:
            self.batch_sizes = [32] if self.end_to_end else [1, 8, 32]
        if set(self.modes) - set(MODES):
            raise UserError(f"--modes takes eager and/or graph, got '{','.join(self.modes)}'.")
        if set(self.quant) - set(QUANT) or not self.quant:
            raise UserError(f"--quant takes a comma list of {', '.join(QUANT)}, got '{','.join(self.quant)}'.")
        if set(self.loads) - set(LOADS) or not self.loads:
            raise UserError(f"--load takes a comma list of {', '.join(LOADS)}, got '{','.join(self.loads)}'.")
        if set(self.quant) != {"none"} and self.end_to_end:
            raise UserError(f"--quant {','.join(self.quant)} times the model parts, and --end-to-end runs float "
                            "(eval.sst2's path); drop one of them.")
        paths_from_strings(self)
