"""Every model with the Ascend kernels selected, through the torch_npu/torchair stand-in (tests/npu_standin.py).

For a 310P (fp16) and a 910B (bf16) profile, each production method runs eagerly and in graph mode through
`runtime.compile_model`, and is compared with the same weights in the same dtype on the plain-math kernels.
Graph mode per chip: the 310P captures the eager forward as one NPUGraph per input shape (no torchair); the
910B compiles through torchair's npugraph_ex; torchair's GE graph is there on both when asked for by name.
The stand-in refuses every call the real wheel documents as unsupported (and every fused op whose doc does not
name the chip), counts the fused ops the model called, keeps the graphs torchair was handed and the NPUGraphs
captured: each must hold what is expected.
Head dims are 16: FIA needs them aligned to 16 in fp16/bf16 (the fixtures' 10 and 12 would fall back).
"""
import copy
from collections import Counter

import pytest
import torch

from npu_kernels import EAGER
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
    return Bert(config), [("forward", (ids, mask, torch.zeros_like(ids)), dict(attention=2, gelu=2))]


def vit_case():
    model = ViT(ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=128,
                          num_classes=5))
    return model, [("forward", (torch.randn(3, 3, 32, 32),), dict(attention=2, gelu=2))]


def vlmo_case(head):
    config = VLMoConfig(image_size=32, embed_dim=32, depth=3, num_heads=2, mlp_dim=128, vlffn_start_layer_index=2,
                        max_text_len=6, max_text_len_of_initckpt=20, vocab_size=50, num_answers=5, head=head)
    image, (ids, mask) = torch.randn(3, 3, 32, 32), padded(3, 6, 50)
    # Every block adds the relative-position bias: on 310P (no pse_shift) attention runs the fp32 math.
    bias_attention = {"310P": 0, "910B": 3}
    if head == "vqa":  # the joint path: text and image experts in blocks 0-1 (two GELUs), the VL expert in 2
        return VLMo(config), [("vqa_logits", (image, ids, mask), dict(attention=bias_attention, gelu=5))]
    return VLMo(config), [("image_embeds", (image,), dict(attention=bias_attention, gelu=3)),
                          ("text_embeds", (ids, mask), dict(attention=bias_attention, gelu=3))]


def blip_case():
    vision = ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=128, num_classes=0)
    text = BertConfig(vocab_size=60, embed_dim=32, depth=2, num_heads=2, mlp_dim=40,
                      max_positions=16, type_vocab_size=0, with_pooler=False, labels=[], cross_attention_dim=32)
    model = Blip(BlipConfig(vision=vision, text=text, itc_dim=16, max_text_len=8))
    images, (ids, mask) = torch.randn(2, 3, 32, 32), padded(130, 8, 60)
    # ITM re-ranks over a hundred pairs per call: 130 > 128, so a 310P gets each attention in two chunks.
    pair_features = torch.randn(130, 17, 32)
    return model, [("image_features", (images,), dict(attention=2, gelu=2)),
                   ("text_embeds", (ids[:4], mask[:4]), dict(attention=2, gelu=2)),
                   ("itm_logits", (pair_features, ids, mask), dict(attention={"310P": 8, "910B": 4}, gelu=2))]


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
    return ViLBERT(config), [("forward", args, dict(attention=7, gelu=7))]


CASES = {"bert": bert_case, "vit": vit_case, "vlmo-vqa": lambda: vlmo_case("vqa"),
         "vlmo-retrieval": lambda: vlmo_case("retrieval"), "blip": blip_case, "vilbert": vilbert_case}


def expected_calls(counts, profile) -> Counter:
    attention = counts["attention"]
    attention = attention[profile] if isinstance(attention, dict) else attention
    return +Counter({ATTENTION[profile]: attention, "npu_gelu": counts["gelu"]})


def on_ascend_kernels(name, profile, ascend_chip):
    """The case's model in the profile's dtype with the chip's kernels, its plain-math twin, and the stand-in."""
    chip, dtype = CHIPS[profile]
    standin = ascend_chip(chip)
    model, methods = CASES[name]()
    model = model.init_weights(seed=1).to(dtype).eval().requires_grad_(False)
    reference = runtime.configure_kernels(copy.deepcopy(model), EAGER)
    runtime.configure_kernels(model, runtime.kernel_plan(NPU0))
    methods = [(method, [a.to(dtype) if a.is_floating_point() else a for a in args], counts)
               for method, args, counts in methods]
    return standin, model, reference, methods, dict(zip(("atol", "rtol"), DEFAULT_TOLERANCE[dtype]))


# The 310P reaches torchair only when asked for GE by name; the 910B by default (npugraph_ex) and by name.
@pytest.mark.parametrize("profile, backend", [("310P", "ge"), ("910B", "auto"), ("910B", "ge")])
@pytest.mark.parametrize("name", CASES)
def test_model_on_ascend_kernels_matches_the_plain_math_eager_and_through_torchair(ascend_chip, name, profile,
                                                                                   backend):
    standin, model, reference, methods, tolerance = on_ascend_kernels(name, profile, ascend_chip)
    for method, args, counts in methods:
        expected = getattr(reference, method)(*args)

        standin.calls.clear()
        eager = getattr(model, method)(*args)
        assert standin.calls == expected_calls(counts, profile), method
        torch.testing.assert_close(eager, expected, **tolerance, msg=lambda m: f"{name}.{method} eager: {m}")

        graphs_before = len(standin.graphs)
        compiled = runtime.compile_model(getattr(model, method), NPU0, backend)(*args)
        new_graphs = standin.graphs[graphs_before:]
        assert len(new_graphs) == 1, f"{name}.{method}: torchair got {len(new_graphs)} graphs (one, no graph break)"
        in_graph = Counter(str(node.target).removeprefix("npu.") for node in new_graphs[0].graph.nodes
                           if node.op == "call_function" and str(node.target).startswith("npu."))
        assert in_graph == expected_calls(counts, profile), method
        torch.testing.assert_close(compiled, eager, **tolerance, msg=lambda m: f"{name}.{method} compiled: {m}")
    assert all(config.experimental_config.frozen_parameter for config in standin.compiler_configs)
    # npugraph_ex captures and replays the graph (outputs cloned out of its memory); GE does not
    captured = backend == "auto"
    assert all((config.mode == "npugraph_ex") == captured and config.debug.aclgraph.enable_output_clone == captured
               for config in standin.compiler_configs)
    assert standin.captures == []


def shuffled(args):
    """The same shapes, other values: each example moved to another row."""
    return [a.roll(1, dims=0) for a in args]


@pytest.mark.parametrize("name", CASES)
def test_every_model_on_310p_captures_one_npugraph_per_shape_and_replays_equal_to_eager(ascend_chip, name):
    standin, model, _, methods, _ = on_ascend_kernels(name, "310P", ascend_chip)
    runtime.apply_device_settings(model, NPU0)  # as loaded: binary kernels, NZ weights
    assert standin.jit_compile is False
    for method, args, counts in methods:
        graphed = runtime.compile_model(getattr(model, method), NPU0)
        captures, replays = len(standin.captures), standin.replays
        first = graphed(*args)
        second = graphed(*shuffled(args))
        assert len(standin.captures) == captures + 1 and standin.replays == replays + 2, f"{name}.{method}"
        # a replay runs the captured fused kernels again
        standin.calls.clear()
        graphed(*args)
        assert standin.calls == expected_calls(counts, "310P"), method
        # replays compute what the eager forward does, and a kept output survives the next replay
        torch.testing.assert_close(first, getattr(model, method)(*args), rtol=0, atol=0)
        torch.testing.assert_close(second, getattr(model, method)(*shuffled(args)), rtol=0, atol=0)
    assert standin.graphs == [] and standin.compiler_configs == []  # torchair was never called
    assert len({id(graph.pool()) for graph in standin.captures}) == len(methods)  # one pool a compiled method


def test_a_new_input_shape_is_one_more_capture_and_a_seen_one_none(ascend_chip):
    standin, model, _, [(method, args, _)], _ = on_ascend_kernels("bert", "310P", ascend_chip)
    graphed = runtime.compile_model(model, NPU0)
    ids, mask, types = args
    for length in (12, 8, 12, 8):
        out = graphed(ids[:, :length], mask[:, :length], types[:, :length])
        torch.testing.assert_close(out, model(ids[:, :length], mask[:, :length], types[:, :length]), rtol=0, atol=0)
    assert len(standin.captures) == 2 and standin.replays == 4
    assert len({id(graph.pool()) for graph in standin.captures}) == 1  # the shapes share one memory pool


def test_a_model_on_an_unlisted_ascend_chip_calls_no_fused_op(ascend_chip):
    standin = ascend_chip("Ascend910A")
    model, [(method, args, _)] = bert_case()
    model = runtime.configure_kernels(model.init_weights().half().eval(), runtime.kernel_plan(NPU0))
    getattr(model, method)(*args)
    assert sum(standin.calls.values()) == 0
