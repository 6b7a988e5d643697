"""BERT WordPiece tokenisation from a plain vocab.txt, matching transformers' BertTokenizer."""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from npu_models.errors import UserError, arg
from npu_models.layers.embeddings import TextEmbeddings

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def read_vocab(path) -> dict[str, int]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"vocabulary {path} does not exist; pass {arg('vocab_file')} with the model's vocab.txt.")
    vocab = {}
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        vocab.setdefault(line.rstrip("\n"), index)
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise UserError(f"vocabulary {path} lacks the special tokens {missing}; it is not a BERT vocab.txt.")
    return vocab


def check_vocab_fits(vocab_file, model) -> None:
    """Refuse, before any work, a vocabulary with more entries than the model's word-embedding table has rows: a
    token id past the table would end the run in an IndexError halfway through a batch."""
    tables = [m.word_embeddings.num_embeddings for m in model.modules() if isinstance(m, TextEmbeddings)]
    if not tables:
        return
    entries = max(read_vocab(vocab_file).values()) + 1
    if entries > min(tables):
        raise UserError(f"vocabulary {vocab_file} has {entries} entries, but the model's word-embedding table has "
                        f"{min(tables)} rows, so token ids {min(tables)} and up have no embedding: pass "
                        f"{arg('vocab_file')} with the vocab.txt the checkpoint was trained with (bert-base-uncased's "
                        "for BLIP, VLMo and ViLBERT; the checkpoint directory's own for BERT).")


def bert_tokenizer(vocab_file, lowercase: bool, max_length: int) -> Tokenizer:
    """[CLS] tokens [SEP], truncated to `max_length` including the two special tokens; no padding."""
    vocab = read_vocab(vocab_file)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    # strip_accents=None follows `lowercase`, as in BertTokenizer.
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=None, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    tokenizer.enable_truncation(max_length)
    return tokenizer


def encode_padded(tokenizer: Tokenizer, texts: list[str], length: int | None = None):
    """Token ids and attention mask [N, length] int64, padded with [PAD] = 0 to exactly `length`
    (None: to the longest text)."""
    sequences = [encoding.ids for encoding in tokenizer.encode_batch(texts)]
    if length is None:
        length = max((len(ids) for ids in sequences), default=1)
    return pad_token_ids(sequences, length)


def pad_token_ids(sequences: list[list[int]], length: int):
    """Token id sequences as ids and attention mask [N, length] int64: cut to `length`, padded with [PAD] = 0."""
    import torch

    ids = torch.zeros(len(sequences), length, dtype=torch.long)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence[:length])
        mask[row, : len(sequence)] = 1
    return ids, mask


@dataclass(frozen=True)
class TextInput:
    """How a model reads text: its configs say it (`config.text_input`), the eval commands only apply it.

    Texts are cleaned (the reference's caption or question clean-up, if any), WordPiece-tokenised with
    [CLS]/[SEP], truncated to max_length and padded with [PAD] = 0: to max_length when pad_to_max (models
    whose sequence layout is fixed), else to the longest text, and then per batch to a length bucket.
    """
    lowercase: bool
    max_length: int
    pad_to_max: bool = True
    clean: Callable[[str], str] | None = None

    def encode(self, vocab_file, texts: list[str]):
        """(token ids, attention mask), both [N, length] int64."""
        texts = [self.clean(t) for t in texts] if self.clean else list(texts)
        tokenizer = bert_tokenizer(vocab_file, self.lowercase, self.max_length)
        return encode_padded(tokenizer, texts, self.max_length if self.pad_to_max else None)
