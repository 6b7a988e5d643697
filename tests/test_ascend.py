"""Every model with the Ascend kernels selected, through the torch_npu/torchair stand-in (tests/npu_standin.py).

For a 310P (fp16) and a 910B (bf16) profile, each production method runs eagerly and compiled through
`runtime.compile_model` (torchair backend, fullgraph) and is compared with the same weights in the same dtype
on the plain-math kernels. The stand-in refuses every call the real wheel documents as unsupported, counts
the fused ops the model called, and keeps the graphs torchair was handed: both must hold the expected ops.
Head dims are 16: FIA needs them aligned to 16 in fp16/bf16 (the fixtures' 10 and 12 would fall back).
"""
import copy
from collections import Counter

import pytest
import torch

from kernels import EAGER
from npu_models import runtime
from npu_models.models.bert.model import Bert, BertConfig
from npu_models.models.blip.model import Blip, BlipConfig
from npu_models.models.vilbert.model import ViLBERT, ViLBERTConfig
from npu_models.models.vit.model import ViT, ViTConfig
from npu_models.models.vlmo.model import VLMo, VLMoConfig
from tests.npu_standin import CHIPS, NPU0
from weights_tools.verify import DEFAULT_TOLERANCE

ATTENTION = {"310P": "npu_prompt_flash_attention", "910B": "npu_fused_infer_attention_score"}


def padded(batch, length, vocab):
    ids = torch.randint(1, vocab, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        mask[row, length - row % (length - 1):] = 0  # a different padding per row
    return ids, mask


def bert_case():
    config = BertConfig(vocab_size=99, embed_dim=32, depth=2, num_heads=2, mlp_dim=37,
                        max_positions=40)
    ids, mask = padded(3, 12, 99)
    return Bert(config), [("forward", (ids, mask, torch.zeros_like(ids)), dict(attention=2, gelu=2, add_ln=4))]


def vit_case():
    model = ViT(ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=128,
                          num_classes=5))
    return model, [("forward", (torch.randn(3, 3, 32, 32),), dict(attention=2, gelu=2, add_ln=0))]


def vlmo_case(head):
    config = VLMoConfig(image_size=32, embed_dim=32, depth=3, num_heads=2, mlp_dim=128, vlffn_start_layer_index=2,
                        max_text_len=6, max_text_len_of_initckpt=20, vocab_size=50, num_answers=5, head=head)
    image, (ids, mask) = torch.randn(3, 3, 32, 32), padded(3, 6, 50)
    # Every block adds the relative-position bias: on 310P (no pse_shift) attention runs the fp32 math.
    bias_attention = {"310P": 0, "910B": 3}
    if head == "vqa":  # the joint path: text and image experts in blocks 0-1 (two GELUs), the VL expert in 2
        return VLMo(config), [("vqa_logits", (image, ids, mask), dict(attention=bias_attention, gelu=5, add_ln=0))]
    return VLMo(config), [("image_embeds", (image,), dict(attention=bias_attention, gelu=3, add_ln=0)),
                          ("text_embeds", (ids, mask), dict(attention=bias_attention, gelu=3, add_ln=0))]


def blip_case():
    vision = ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=128, num_classes=0)
    text = BertConfig(vocab_size=60, embed_dim=32, depth=2, num_heads=2, mlp_dim=40,
                      max_positions=16, type_vocab_size=0, with_pooler=False, labels=[], cross_attention_dim=32)
    model = Blip(BlipConfig(vision=vision, text=text, itc_dim=16, max_text_len=8))
    images, (ids, mask) = torch.randn(2, 3, 32, 32), padded(130, 8, 60)
    # ITM re-ranks over a hundred pairs per call: 130 > 128, so a 310P gets each attention in two chunks.
    pair_features = torch.randn(130, 17, 32)
    return model, [("image_features", (images,), dict(attention=2, gelu=2, add_ln=0)),
                   ("text_embeds", (ids[:4], mask[:4]), dict(attention=2, gelu=2, add_ln=4)),
                   ("itm_logits", (pair_features, ids, mask), dict(attention={"310P": 8, "910B": 4}, gelu=2, add_ln=6))]


def vilbert_case():
    text = BertConfig(vocab_size=70, embed_dim=32, depth=3, num_heads=2, mlp_dim=40,
                      max_positions=20, labels=[], with_pooler=False)
    config = ViLBERTConfig(text=text, image_feature_dim=24, image_embed_dim=32, image_num_heads=2,
                           image_depth=2, image_mlp_dim=36, coattention_dim=32,
                           coattention_heads=2, pooled_dim=20, image_biattention_ids=[0, 1],
                           text_biattention_ids=[1, 2], num_answers=7)
    ids, mask = padded(3, 10, 70)
    boxes, box_mask = torch.randn(3, 9, 24), torch.ones(3, 9, dtype=torch.bool)
    box_mask[1, 6:] = False
    args = (boxes, torch.rand(3, 9, 4), box_mask, ids, mask.bool(), torch.zeros_like(ids))
    # text layers 0-1, image layer 0, then two co-attention layers of two cross-attention blocks each
    return ViLBERT(config), [("forward", args, dict(attention=7, gelu=7, add_ln=14))]


CASES = {"bert": bert_case, "vit": vit_case, "vlmo-vqa": lambda: vlmo_case("vqa"),
         "vlmo-retrieval": lambda: vlmo_case("retrieval"), "blip": blip_case, "vilbert": vilbert_case}


def expected_calls(counts, profile) -> Counter:
    attention = counts["attention"]
    attention = attention[profile] if isinstance(attention, dict) else attention
    return +Counter({ATTENTION[profile]: attention, "npu_gelu": counts["gelu"], "npu_add_layer_norm": counts["add_ln"]})


@pytest.mark.parametrize("profile", ["310P", "910B"])
@pytest.mark.parametrize("name", CASES)
def test_model_on_ascend_kernels_matches_the_plain_math_eager_and_compiled(ascend_chip, name, profile):
    chip, dtype = CHIPS[profile]
    standin = ascend_chip(chip)
    model, methods = CASES[name]()
    model = model.init_weights(seed=1).to(dtype).eval().requires_grad_(False)
    reference = runtime.configure_kernels(copy.deepcopy(model), EAGER)
    runtime.configure_kernels(model, runtime.kernel_plan(NPU0))
    tolerance = dict(zip(("atol", "rtol"), DEFAULT_TOLERANCE[dtype]))
    for method, args, counts in methods:
        args = [a.to(dtype) if a.is_floating_point() else a for a in args]
        expected = getattr(reference, method)(*args)

        standin.calls.clear()
        eager = getattr(model, method)(*args)
        assert standin.calls == expected_calls(counts, profile), method
        torch.testing.assert_close(eager, expected, **tolerance, msg=lambda m: f"{name}.{method} eager: {m}")

        graphs_before = len(standin.graphs)
        compiled = runtime.compile_model(getattr(model, method), NPU0)(*args)
        new_graphs = standin.graphs[graphs_before:]
        assert len(new_graphs) == 1, f"{name}.{method}: torchair got {len(new_graphs)} graphs (one, no graph break)"
        in_graph = Counter(str(node.target).removeprefix("npu.") for node in new_graphs[0].graph.nodes
                           if node.op == "call_function" and str(node.target).startswith("npu."))
        assert in_graph == expected_calls(counts, profile), method
        torch.testing.assert_close(compiled, eager, **tolerance, msg=lambda m: f"{name}.{method} compiled: {m}")
    assert all(config.experimental_config.frozen_parameter for config in standin.compiler_configs)
    # A2/A3 capture and replay the graph (outputs cloned out of its memory); the 310P keeps the GE graph
    captured = profile == "910B"
    assert all((config.mode == "npugraph_ex") == captured and config.debug.aclgraph.enable_output_clone == captured
               for config in standin.compiler_configs)


def test_a_model_on_an_unlisted_ascend_chip_calls_no_fused_op(ascend_chip):
    standin = ascend_chip("Ascend910A")
    model, [(method, args, _)] = bert_case()
    model = runtime.configure_kernels(model.init_weights().half().eval(), runtime.kernel_plan(NPU0))
    getattr(model, method)(*args)
    assert sum(standin.calls.values()) == 0
