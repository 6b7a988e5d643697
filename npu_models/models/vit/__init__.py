"""Vision Transformer for ImageNet classification (timm's vit_base_patch32_224): modules in model.py, the
Google .npz / timm checkpoint reader in checkpoint.py, what eval.bench times in bench.py, what verify
compares in outputs.py; the spec the registry lists, here."""
from npu_models.models.vit.bench import vit_inputs
from npu_models.models.vit.checkpoint import read_vit
from npu_models.models.vit.model import ViT, ViTConfig, vit_base_patch32_224
from npu_models.models.vit.outputs import vit_outputs
from npu_models.spec import Benchmark, ModelSpec
from npu_models.tasks import ImageClassification

# Attention split by heads, the MLP by hidden units (npu_models.parallel).
TP_PLAN = {"blocks.*.attn": "heads", "blocks.*.mlp": "mlp"}

SPECS = [
    ModelSpec("vit-base-patch32-224", "vit", "vit", ViTConfig, vit_base_patch32_224, ViT, read_vit,
              ImageClassification(), tp_plan=TP_PLAN, benchmarks={"": Benchmark(vit_inputs)}, outputs=vit_outputs),
]
