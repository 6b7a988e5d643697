"""BERT for sequence classification (bert-base-cased fine-tuned on SST-2): modules in model.py, the Hugging
Face checkpoint reader in checkpoint.py, what eval.bench times in bench.py, what verify compares in
outputs.py; the spec the registry lists, here."""
from npu_models.models.bert.bench import bert_inputs
from npu_models.models.bert.checkpoint import read_hf_bert
from npu_models.models.bert.model import Bert, BertConfig, bert_base_cased_sst2
from npu_models.models.bert.outputs import bert_outputs
from npu_models.spec import Benchmark, ModelSpec
from npu_models.tasks import TextClassification

# Attention split by heads, the MLP by hidden units (npu_models.parallel); BLIP's text encoder adds the
# cross-attention.
TP_PLAN = {"blocks.*.attn": "heads", "blocks.*.cross_attn": "heads", "blocks.*.mlp": "mlp"}

SPECS = [
    ModelSpec("bert-base-cased-sst2", "bert", "bert", BertConfig, bert_base_cased_sst2, Bert, read_hf_bert,
              TextClassification(), assets=("vocab.txt",), tp_plan=TP_PLAN, benchmarks={"": Benchmark(bert_inputs)},
              outputs=bert_outputs),
]
