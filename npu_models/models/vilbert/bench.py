"""What eval.bench times for ViLBERT: the model from cached region features (the ModelZoo guide's figure);
eval.bench adds the run from images through the detector for every region-feature model."""
import torch


def vilbert_inputs(config, batch_size, seq_len, device):
    """100 precomputed regions per image (as the ModelZoo guide times it) and 32-token questions."""
    generator = torch.Generator().manual_seed(batch_size)
    features = torch.relu(torch.randn(batch_size, 100, config.image_feature_dim, generator=generator))
    corners = torch.rand(batch_size, 100, 2, generator=generator) * 600
    coordinates = torch.cat([corners, corners + 200], dim=-1)
    ids = torch.randint(1, config.text.vocab_size, (batch_size, 32), generator=generator)
    inputs = (features, coordinates, torch.ones(batch_size, 100, dtype=torch.bool), ids, torch.ones_like(ids).bool(),
              torch.zeros_like(ids))
    return tuple(t.to(device) for t in inputs), 32 + 100
