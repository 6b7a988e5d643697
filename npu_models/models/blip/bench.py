"""What eval.bench times for BLIP: its three inference parts, as the Ascend ModelZoo guide splits them into
OM files (image encoder, text encoder, ITM)."""
import torch


def blip_image_inputs(config, batch_size, seq_len, device):
    generator = torch.Generator().manual_seed(batch_size)
    size = config.vision.image_size
    return (torch.randn(batch_size, 3, size, size, generator=generator).to(device),), config.vision.grid_size ** 2 + 1


def blip_text_inputs(config, batch_size, seq_len, device):
    generator = torch.Generator().manual_seed(batch_size)
    ids = torch.randint(1000 % config.text.vocab_size, config.text.vocab_size - 2, (batch_size, config.max_text_len),
                        generator=generator)
    return (ids.to(device), torch.ones_like(ids).to(device)), config.max_text_len


def blip_itm_inputs(config, batch_size, seq_len, device):
    (ids, mask), length = blip_text_inputs(config, batch_size, seq_len, device)
    generator = torch.Generator().manual_seed(batch_size)
    image_feat = torch.randn(batch_size, config.vision.grid_size ** 2 + 1, config.vision.embed_dim, generator=generator)
    return (image_feat.to(device), ids, mask), length


def blip_image_part(model):
    """The ModelZoo guide's image OM: image_feat and the ITC image_embeds."""
    def image_encoder(images):
        features = model.image_features(images)
        return torch.cat([model.image_embeds(features), features[:, 0]], dim=-1)
    return image_encoder
