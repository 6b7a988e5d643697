"""Request adapters: what each endpoint reads, how one input is prepared (in the worker pool), how a batch of
prepared inputs runs on the device, and the response. The model is called exactly as the eval commands call it
(the spec's task adapter, the config's text_input and transform), so a request's answer is the eval command's.

An adapter's `parse` runs on the event loop and only checks the body (a RequestError is a 4xx before any work);
`prepare` tokenizes or decodes one input in the worker pool; `run` gets prepared inputs that share a batch key
(the endpoint first, then the kind of input and its padded shape) on the device's thread; `respond` builds the
JSON answer.
"""
import base64
import math
import struct
from dataclasses import dataclass, field

import torch

from eval.data.region_features import decode_detector_image, pad_regions
from npu_models import runtime
from npu_models.serve.requests import (ImageItem, as_list, body_value, decode_image, image_item, invalid,
                                       positive_int, text_item)
from npu_models.tokenizer import bert_tokenizer, pad_token_ids

LENGTH_STEP = 16  # texts are batched by length bucket: a batch pads fewer than 16 tokens per text


@dataclass
class Prepared:
    """One input, ready for the device: its batch key, the tokens it adds to a batch, its CPU tensors."""
    key: tuple
    tokens: int
    tensors: tuple


@dataclass
class Parsed:
    """A checked request: its inputs (still raw), whether one was given bare, and its options."""
    items: list
    single: bool = False
    options: dict = field(default_factory=dict)


class TextEncoder:
    """WordPiece as the eval commands tokenise (the config's text_input, or BERT's own casing), one text at a time;
    a text longer than the model reads is refused unless the request asks to truncate it."""

    def __init__(self, vocab, lowercase: bool, max_length: int, clean=None, pad_to_max: bool = False):
        self.tokenizer = bert_tokenizer(vocab, lowercase, max_length)
        self.max_length, self.clean, self.pad_to_max = max_length, clean, pad_to_max
        self.buckets = runtime.length_buckets(max_length, LENGTH_STEP)

    @classmethod
    def for_text_input(cls, vocab, text_input):
        return cls(vocab, text_input.lowercase, text_input.max_length, text_input.clean, text_input.pad_to_max)

    def encode(self, text: str, name: str, truncate: bool) -> list[int]:
        encoding = self.tokenizer.encode(self.clean(text) if self.clean else text)
        if encoding.overflowing and not truncate:
            raise invalid(f"`{name}` is longer than the {self.max_length} tokens the model reads: shorten it, or send "
                          "\"truncate\": true to cut it as the eval commands do.")
        return encoding.ids

    def padded_length(self, length: int) -> int:
        """The length a text of `length` tokens is padded to, part of its batch key: the model's fixed length, or
        its 16-token bucket. Batching by bucket wastes little on padding: on a CPU, where BERT is compute-bound,
        batches of any length padded to their longest served a quarter fewer requests per second."""
        return self.max_length if self.pad_to_max else runtime.bucket_for(length, self.buckets)


def truncate_option(body: dict) -> bool:
    value = body.get("truncate", False)
    if not isinstance(value, bool):
        raise invalid(f"`truncate` must be true or false, got {value!r}.")
    return value


class Adapter:
    """One endpoint of one model. `device` and `dtype` are the model's; `max_items` caps a request's inputs."""
    endpoint: str

    def __init__(self, served, max_items: int):
        self.served, self.model, self.max_items = served, served.model, max_items
        self.device, self.dtype = served.device, served.dtype

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return runtime.to_model_input(tensor, self.device, self.dtype)

    def parse(self, body) -> Parsed:
        raise NotImplementedError

    def prepare(self, item, options: dict) -> Prepared:
        raise NotImplementedError

    def prepare_all(self, parsed: Parsed) -> list[Prepared]:
        """Every input of a request, ready for the device (in the worker pool)."""
        return [self.prepare(item, parsed.options) for item in parsed.items]

    def run(self, key: tuple, batch: list[tuple]) -> list:
        raise NotImplementedError

    def respond(self, parsed: Parsed, outputs: list, prepared: list[Prepared]) -> dict:
        raise NotImplementedError

    def warmup(self) -> list[tuple[tuple, list[tuple]]]:
        """(key, batch) pairs covering the shapes requests will bring: run once before the server is ready."""
        return []

    def image_tensor(self, item: ImageItem) -> torch.Tensor:
        return self.served.transform(decode_image(item))

    def padded_to(self, key: tuple, sequences: list[list[int]]) -> int:
        """Graph mode pads to the key's length (its compiled shape); eager mode only to the batch's longest text."""
        if self.served.graph or self.served.encoder.pad_to_max:
            return key[-1]
        return max(len(sequence) for sequence in sequences)

    def text_rows(self, key: tuple, batch: list[tuple], at: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's token ids and mask. Eagerly, no mask where no text is padded (attention needs none then), as
        the eval commands do; graph mode always passes one, so each shape is one graph, compiled at warm-up."""
        sequences = [tensors[at] for tensors in batch]
        ids, mask = pad_token_ids(sequences, self.padded_to(key, sequences))
        return self.to_device(ids), None if bool(mask.all()) and not self.served.graph else self.to_device(mask)

    def text_key(self, ids: list[int]) -> tuple:
        """A text input's batch key: its endpoint (which adapter runs the batch), and its padded length."""
        return self.endpoint, "text", self.served.encoder.padded_length(len(ids))

    def dummy_text(self, length: int) -> list[int]:
        """A text of `length` tokens for warm-up: [CLS] [UNK]... [SEP]."""
        vocab = self.served.encoder.tokenizer.get_vocab()
        return [vocab["[CLS]"]] + [vocab["[UNK]"]] * (length - 2) + [vocab["[SEP]"]]

    def text_warmup(self) -> list[tuple[tuple, list[tuple]]]:
        encoder = self.served.encoder
        lengths = [encoder.max_length] if encoder.pad_to_max else encoder.buckets
        if not self.served.graph:  # eager mode sets nothing up per shape: one small batch warms the kernels
            lengths = lengths[:1]
        rows = self.served.max_batch_size if self.served.graph else 1
        return [((self.endpoint, "text", length), [(self.dummy_text(length),)] * rows) for length in lengths]

    def image_warmup(self) -> list[tuple[tuple, list[tuple]]]:
        size = self.served.transform_spec.size
        rows = self.served.max_batch_size if self.served.graph else 1
        return [((self.endpoint, "image"), [(torch.zeros(3, size, size),)] * rows)]

    def usage(self, prepared: list[Prepared]) -> dict:
        tokens = sum(p.tokens for p in prepared)
        return {"prompt_tokens": tokens, "total_tokens": tokens}


def softmax_rows(logits: torch.Tensor) -> list[list[float]]:
    return logits.float().softmax(dim=-1).cpu().tolist()


class TextClassify(Adapter):
    """POST /classify for a sentence classifier, as vLLM's: {"input": text | [texts]} -> data[{index, label, probs}]."""
    endpoint = "/classify"

    def parse(self, body) -> Parsed:
        texts, single = as_list(body_value(body, "input"), "input", self.max_items)
        checked = [text_item(text, "input" if single else f"input[{i}]") for i, text in enumerate(texts)]
        return Parsed(checked, single, {"truncate": truncate_option(body)})

    def prepare(self, item, options: dict) -> Prepared:
        text, name = item
        ids = self.served.encoder.encode(text, name, options["truncate"])
        return Prepared(self.text_key(ids), len(ids), (ids,))

    def run(self, key, batch):
        ids, mask = self.text_rows(key, batch)
        with torch.no_grad():
            return softmax_rows(self.model(ids, mask, torch.zeros_like(ids)))

    def respond(self, parsed, outputs, prepared):
        labels = self.model.config.labels
        data = [{"index": i, "label": labels[max(range(len(p)), key=p.__getitem__)], "probs": p,
                 "num_classes": len(p)} for i, p in enumerate(outputs)]
        return {"object": "list", "data": data, "usage": self.usage(prepared)}

    def warmup(self):
        return self.text_warmup()


class ImageClassify(Adapter):
    """POST /classify for an image classifier: {"input": image item | [image items]} -> each image's top-5."""
    endpoint = "/classify"
    top = 5

    def parse(self, body) -> Parsed:
        images, single = as_list(body_value(body, "input"), "input", self.max_items)
        items = [image_item(image, "input" if single else f"input[{i}]") for i, image in enumerate(images)]
        return Parsed(items, single)

    def prepare(self, item, options):
        return Prepared((self.endpoint, "image"), 0, (self.image_tensor(item),))

    def run(self, key, batch):
        pixels = self.to_device(torch.stack([tensors[0] for tensors in batch]))
        with torch.no_grad():
            return softmax_rows(self.model(pixels))

    def respond(self, parsed, outputs, prepared):
        labels = getattr(self.model.config, "labels", None)
        data = []
        for i, probs in enumerate(outputs):
            top = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[: self.top]
            name = (lambda c: labels[c]) if labels else str
            data.append({"index": i, "label": name(top[0]), "probs": [probs[c] for c in top],
                         "top5": [{"label": name(c), "class": c, "prob": probs[c]} for c in top],
                         "num_classes": len(probs)})
        return {"object": "list", "data": data, "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    def warmup(self):
        return self.image_warmup()


def text_or_image(value, name: str):
    return image_item(value, name) if isinstance(value, dict) else text_item(value, name)


class Embeddings(Adapter):
    """POST /v1/embeddings for a retrieval model, in OpenAI's shape: texts and image items in, the model's
    L2-normalised retrieval embeddings out (images and texts share one space); encoding_format float | base64."""
    endpoint = "/v1/embeddings"

    def parse(self, body) -> Parsed:
        inputs, single = as_list(body_value(body, "input"), "input", self.max_items)
        items = [text_or_image(value, "input" if single else f"input[{i}]") for i, value in enumerate(inputs)]
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise invalid(f"`encoding_format` must be \"float\" or \"base64\", got {encoding!r}.")
        return Parsed(items, single, {"truncate": truncate_option(body), "encoding_format": encoding})

    def prepare(self, item, options):
        if isinstance(item, ImageItem):
            return Prepared((self.endpoint, "image"), 0, (self.image_tensor(item),))
        text, name = item
        ids = self.served.encoder.encode(text, name, options["truncate"])
        return Prepared(self.text_key(ids), len(ids), (ids,))

    def run(self, key, batch):
        task = self.served.task
        with torch.no_grad():
            if key[1] == "image":
                embeds = task.encode_images(self.model, self.to_device(torch.stack([t[0] for t in batch])))[0]
            else:
                sequences = [t[0] for t in batch]
                ids, mask = pad_token_ids(sequences, self.padded_to(key, sequences))
                embeds = task.encode_texts(self.model, self.to_device(ids), self.to_device(mask))
        return embeds.float().cpu().tolist()

    def respond(self, parsed, outputs, prepared):
        encode = parsed.options["encoding_format"] == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(struct.pack(f"<{len(e)}f", *e)).decode() if encode else e}
                for i, e in enumerate(outputs)]
        return {"object": "list", "data": data, "model": self.served.name, "usage": self.usage(prepared)}

    def warmup(self):
        return self.text_warmup() + self.image_warmup()


class Score(Adapter):
    """POST /score for image-text pairs, in vLLM's shape: {"text_1": image item(s), "text_2": text(s)} paired one to
    one, or one image to every text; BLIP answers its ITM match probability, VLMo the similarity of its
    retrieval embeddings."""
    endpoint = "/score"

    def parse(self, body) -> Parsed:
        images, single_image = as_list(body_value(body, "text_1"), "text_1", self.max_items)
        texts, single_text = as_list(body_value(body, "text_2"), "text_2", self.max_items)
        images = [image_item(v, "text_1" if single_image else f"text_1[{i}]") for i, v in enumerate(images)]
        texts = [text_item(v, "text_2" if single_text else f"text_2[{i}]") for i, v in enumerate(texts)]
        if len(images) == 1:
            images = images * len(texts)
        if len(images) != len(texts):
            raise invalid(f"`text_1` holds {len(images)} images and `text_2` {len(texts)} texts: give one image for "
                          "all texts, or as many images as texts.")
        return Parsed(list(zip(images, texts)), single_text, {"truncate": truncate_option(body)})

    def prepare_all(self, parsed) -> list[Prepared]:
        # one image scored against many texts is decoded once: its pairs share its ImageItem, then its tensor
        images = {id(image): self.image_tensor(image) for image, _ in parsed.items}
        return [self.prepare_pair(images[id(image)], text, parsed.options) for image, text in parsed.items]

    def prepare(self, item, options):
        image, text = item
        return self.prepare_pair(self.image_tensor(image), text, options)

    def prepare_pair(self, pixels: torch.Tensor, text: tuple[str, str], options) -> Prepared:
        ids = self.served.encoder.encode(*text, options["truncate"])
        return Prepared(self.text_key(ids), len(ids), (pixels, ids))

    def run(self, key, batch):
        # each distinct image of the batch through the image encoder once, then one row a pair
        distinct: dict[int, int] = {}
        rows = [distinct.setdefault(id(pixels), len(distinct)) for pixels, _ in batch]
        images = list({id(pixels): pixels for pixels, _ in batch}.values())
        pixels, rows = self.to_device(torch.stack(images)), torch.tensor(rows, device=self.device)
        sequences = [t[1] for t in batch]
        ids, mask = pad_token_ids(sequences, self.padded_to(key, sequences))
        ids, mask = self.to_device(ids), self.to_device(mask)
        with torch.no_grad():
            if hasattr(self.model, "itm_logits"):  # a matching head: its probability of "match"
                features = self.model.image_features(pixels)[rows]
                scores = self.model.itm_logits(features, ids, mask).float().softmax(-1)[:, 1]
            else:
                image = self.served.task.encode_images(self.model, pixels)[0][rows]
                scores = (image * self.served.task.encode_texts(self.model, ids, mask)).sum(dim=-1)
        return scores.float().cpu().tolist()

    def respond(self, parsed, outputs, prepared):
        data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(outputs)]
        return {"object": "list", "data": data, "model": self.served.name, "usage": self.usage(prepared)}

    def warmup(self):
        size = self.served.transform_spec.size
        image = torch.zeros(3, size, size)
        return [(key, [(image, ids) for (ids,) in batch]) for key, batch in self.text_warmup()]


class VisualQuestionAnswering(Adapter):
    """POST /vqa: {"image", "question", "top_k"} -> the top_k answers with their scores (the answer head's sigmoid,
    as it was trained); the first is the eval command's answer."""
    endpoint = "/vqa"

    def parse(self, body) -> Parsed:
        image = body_value(body, "image")
        if not isinstance(image, str):
            raise invalid("`image` must be the image's bytes in base64, or a data: URL.")
        image = image_item({"image": image}, "image")
        question = text_item(body_value(body, "question"), "question")
        top_k = positive_int(body.get("top_k"), "top_k", 5)
        return Parsed([(image, question)], True, {"truncate": truncate_option(body), "top_k": top_k})

    def prepare(self, item, options):
        image, (question, name) = item
        ids = self.served.encoder.encode(question, name, options["truncate"])
        visual = self.detector_input(image) if self.regions else self.image_tensor(image)
        return Prepared(self.text_key(ids), len(ids), (ids, visual))

    @property
    def regions(self) -> bool:
        return self.served.task.visual == "regions"

    def detector_input(self, item: ImageItem) -> torch.Tensor:
        """The image as eval.vqa feeds the detector (eval.data.region_features), or a 422 naming the field."""
        try:
            return decode_detector_image(item.data)
        except (RuntimeError, ValueError) as err:
            raise invalid(f"`{item.field}` could not be decoded as an image ({type(err).__name__}): send a JPEG or "
                          "PNG.") from None

    def visual_inputs(self, images: list[torch.Tensor]) -> tuple:
        """Pixels, or for a region-feature model its detections: each image alone through the detector (features
        as eval.vqa caches them, one file an image), padded to the model's box count."""
        if not self.regions:
            return (self.to_device(torch.stack(images)),)
        padded = [pad_regions(r["box_features"], r["box_coordinates"])
                  for r in (self.served.extractor([image])[0] for image in images)]
        features, boxes, box_mask = (torch.stack([p[i] for p in padded]) for i in range(3))
        return self.to_device(features), self.to_device(boxes), box_mask.to(self.device)

    def run(self, key, batch):
        ids, mask = self.text_rows(key, batch)
        visual = self.visual_inputs([t[1] for t in batch])
        with torch.no_grad():
            logits = self.served.task.answer_logits(self.model, *visual, ids, mask)
        return logits.float().cpu().tolist()

    def respond(self, parsed, outputs, prepared):
        logits = outputs[0]
        top_k = min(parsed.options["top_k"], len(logits))
        best = sorted(range(len(logits)), key=logits.__getitem__, reverse=True)[:top_k]
        answers = [{"answer": self.served.answers[label], "label": label, "score": 1 / (1 + math.exp(-logits[label]))}
                   for label in best]
        return {"answers": answers, "model": self.served.name, "usage": self.usage(prepared)}

    def warmup(self):
        size = 64 if self.regions else self.served.transform_spec.size  # the detector takes any size
        image = torch.zeros(3, size, size)
        return [(key, [(ids, image) for (ids,) in batch]) for key, batch in self.text_warmup()]


def adapters_for(served, max_items: int) -> dict[str, Adapter]:
    """The endpoints a model serves, by its task."""
    kinds = {"sst2": [TextClassify], "imagenet": [ImageClassify], "retrieval": [Embeddings, Score],
             "vqa": [VisualQuestionAnswering]}
    return {cls.endpoint: cls(served, max_items) for cls in kinds[served.task.name]}
