"""What eval.bench times for VLMo: the VQA model whole; for retrieval the image encoder (the caption side is
a short text-only pass). VLMo has no peer outside its training repository (pytorch_lightning, fairscale):
ours is timed alone."""
import torch


def vlmo_vqa_inputs(config, batch_size, seq_len, device):
    """Images at the model's size and max_text_len-token questions, all valid: eval.vqa groups questions by
    length, so a batch has no padding and runs without a text mask. The joint sequence is text + image."""
    generator = torch.Generator().manual_seed(batch_size)
    image = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator)
    text_ids = torch.randint(1, config.vocab_size, (batch_size, config.max_text_len), generator=generator)
    return (image.to(device), text_ids.to(device)), config.max_text_len + config.num_image_tokens


def vlmo_image_inputs(config, batch_size, seq_len, device):
    generator = torch.Generator().manual_seed(batch_size)
    image = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator)
    return (image.to(device),), config.num_image_tokens
