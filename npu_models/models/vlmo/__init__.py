"""VLMo (mixture-of-modality experts) fine-tuned for VQAv2 and for COCO retrieval: one family, two specs,
the checkpoint's head telling them apart. Modules in model.py, the microsoft/unilm checkpoint reader in
checkpoint.py, what eval.bench times in bench.py, what verify compares in outputs.py; the specs the
registry lists, here."""
from npu_models.models.vlmo.bench import vlmo_image_inputs, vlmo_vqa_inputs
from npu_models.models.vlmo.checkpoint import read_vlmo
from npu_models.models.vlmo.model import VLMo, VLMoConfig, vlmo_base_coco_retrieval, vlmo_base_vqa
from npu_models.models.vlmo.outputs import vlmo_outputs
from npu_models.spec import Benchmark, ModelSpec
from npu_models.tasks import RetrievalTask, VQATask

# Attention split by heads, every expert's MLP by hidden units, and the relative-position table (one
# column per layer and head) by its heads' columns (npu_models.parallel).
TP_PLAN = {"blocks.*.attn": "heads", "blocks.*.ffn.mlps.*": "mlp", "relative_position_bias_table": "head_columns"}

VQA = VQATask("pixels", lambda model, pixels, ids, masks: model(pixels, ids, masks))
RETRIEVAL = RetrievalTask(lambda model, pixels: (model.image_embeds(pixels), None),
                          lambda model, ids, masks: model.text_embeds(ids, masks))

SPECS = [
    ModelSpec("vlmo-base-vqa", "vlmo", "vlmo", VLMoConfig, vlmo_base_vqa, VLMo, read_vlmo, VQA,
              assets=("vocab.txt", "answer2label.txt"), tp_plan=TP_PLAN, benchmarks={"": Benchmark(vlmo_vqa_inputs)},
              outputs=vlmo_outputs),
    ModelSpec("vlmo-base-coco-retrieval", "vlmo", "vlmo", VLMoConfig, vlmo_base_coco_retrieval, VLMo, read_vlmo,
              RETRIEVAL, assets=("vocab.txt",), tp_plan=TP_PLAN,
              benchmarks={"": Benchmark(vlmo_image_inputs, timed_part=lambda model: model.image_embeds)},
              outputs=vlmo_outputs),
]
