"""BERT WordPiece tokenisation from a plain vocab.txt, matching transformers' BertTokenizer."""
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from npu_models.errors import UserError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def read_vocab(path) -> dict[str, int]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"vocabulary {path} does not exist; pass --vocab with the model's vocab.txt.")
    vocab = {}
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        vocab.setdefault(line.rstrip("\n"), index)
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise UserError(f"vocabulary {path} lacks the special tokens {missing}; it is not a BERT vocab.txt.")
    return vocab


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
    import torch

    encodings = tokenizer.encode_batch(texts)
    if length is None:
        length = max((len(e.ids) for e in encodings), default=1)
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids[:length])
        mask[row, : len(encoding.ids)] = 1
    return ids, mask
