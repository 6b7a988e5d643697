"""What eval.bench times for BERT: the whole classifier on inputs shaped as ais_bench feeds them."""
import torch


def bert_inputs(config, batch_size, seq_len, device):
    """All-valid token ids at min(seq_len, max positions), as ais_bench feeds them; returns (inputs, seq_len)."""
    seq_len = min(seq_len, config.max_positions)
    generator = torch.Generator().manual_seed(batch_size)
    input_ids = torch.randint(1, config.vocab_size, (batch_size, seq_len), generator=generator)
    mask, types = torch.ones_like(input_ids), torch.zeros_like(input_ids)
    return (input_ids.to(device), mask.to(device), types.to(device)), seq_len
