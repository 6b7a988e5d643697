"""What eval.bench times for ViT: the whole classifier on normalised random pixels."""
import torch


def vit_inputs(config, batch_size, seq_len, device):
    """Normalised random pixels at the model's input size; the sequence is its patch tokens + class token."""
    generator = torch.Generator().manual_seed(batch_size)
    pixels = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator)
    return (pixels.to(device),), config.grid_size ** 2 + 1
