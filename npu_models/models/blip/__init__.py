"""BLIP image-text retrieval (COCO fine-tune): a ViT image encoder and a BERT text encoder with
cross-attention (from the vit and bert folders), ITC projections and the ITM head. Modules in model.py, the
salesforce/BLIP checkpoint reader in checkpoint.py, what eval.bench times in bench.py, what verify compares
in outputs.py; the spec the registry lists, here."""
from npu_models.models import bert, vit
from npu_models.models.blip.bench import blip_image_inputs, blip_image_part, blip_itm_inputs, blip_text_inputs
from npu_models.models.blip.checkpoint import read_blip
from npu_models.models.blip.model import UNSELECTED_SCORE, Blip, BlipConfig, blip_retrieval_coco, rerank
from npu_models.models.blip.outputs import BLIP_RANKINGS, blip_outputs
from npu_models.spec import Benchmark, ModelSpec
from npu_models.tasks import RetrievalTask

# Each encoder split as its own family splits it.
TP_PLAN = {**{f"visual_encoder.{k}": v for k, v in vit.TP_PLAN.items()},
           **{f"text_encoder.{k}": v for k, v in bert.TP_PLAN.items()}}


def encode_images(model, pixels):
    features = model.image_features(pixels)  # the ITM head re-reads every image token
    return model.image_embeds(features), features


RETRIEVAL = RetrievalTask(encode_images, lambda model, ids, masks: model.text_embeds(ids, masks), rerank=rerank,
                          rerank_k=lambda config: config.k_test, unselected_score=UNSELECTED_SCORE)

SPECS = [
    ModelSpec("blip-retrieval-coco", "blip", "blip", BlipConfig, blip_retrieval_coco, Blip, read_blip, RETRIEVAL,
              assets=("vocab.txt",), tp_plan=TP_PLAN,
              benchmarks={"image": Benchmark(blip_image_inputs, timed_part=blip_image_part),
                          "text": Benchmark(blip_text_inputs, timed_part=lambda model: model.text_embeds),
                          "itm": Benchmark(blip_itm_inputs)},
              outputs=blip_outputs, rankings=BLIP_RANKINGS),
]
