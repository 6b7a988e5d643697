"""What a request body may hold, checked before any work: each fault is a RequestError whose message names the
field (`input[2].image`) and what fixes it. No model knowledge here beyond the limits an adapter passes in."""
import base64
import binascii
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from npu_models.transforms import load_rgb


class RequestError(Exception):
    """A request the server refuses: the HTTP status, and the JSON error body's message and type."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.status}}


def invalid(message: str) -> RequestError:
    return RequestError(422, message)


@dataclass(frozen=True)
class ImageItem:
    """An image given as {"image": "<base64 or data: URL>"}, decoded bytes kept until preprocessing."""
    data: bytes
    field: str


def body_value(body: dict, name: str, required: bool = True):
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object.")
    if name not in body:
        if required:
            raise invalid(f"`{name}` is missing.")
        return None
    return body[name]


def as_list(value, name: str, max_items: int) -> tuple[list, bool]:
    """(the items, whether one was given bare): a single item or a non-empty list of at most `max_items`."""
    single = not isinstance(value, list)
    items = [value] if single else value
    if not items:
        raise invalid(f"`{name}` is an empty list: give at least one item.")
    if len(items) > max_items:
        raise invalid(f"`{name}` holds {len(items)} items, more than the {max_items} a request may hold "
                      "(--max-batch-size): split it into several requests.")
    return items, single


def text_item(value, name: str) -> tuple[str, str]:
    """(the text, its field name): the name travels with it, so a text found too long later is named too."""
    if not isinstance(value, str):
        raise invalid(f"`{name}` must be a string, got {type(value).__name__}.")
    if not value.strip():
        raise invalid(f"`{name}` is empty: give some text.")
    return value, name


def image_item(value, name: str) -> ImageItem:
    """{"image": base64 or a data: URL} -> its bytes (decoded as an image later, in the worker pool)."""
    if not isinstance(value, dict) or not isinstance(value.get("image"), str):
        raise invalid(f"`{name}` must be an image item {{\"image\": \"<base64 or data: URL>\"}}.")
    where = name if name == "image" else f"{name}.image"  # /vqa's image is a field of the body itself
    text = value["image"]
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise invalid(f"`{where}` is a data: URL without ;base64: encode the image bytes in base64.")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"`{where}` is not valid base64: send the image file's bytes base64-encoded.") from None
    if not data:
        raise invalid(f"`{where}` is empty.")
    return ImageItem(data, where)


def decode_image(item: ImageItem) -> Image.Image:
    """The RGB image (greyscale, CMYK and palette images converted), or a 422 naming the field."""
    try:
        return load_rgb(io.BytesIO(item.data))  # as the eval commands decode an image file
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise invalid(f"`{item.field}` could not be decoded as an image ({type(err).__name__}): send a JPEG, PNG or "
                      "another format Pillow reads.") from None


def positive_int(value, name: str, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(f"`{name}` must be a whole number of at least 1, got {value!r}.")
    return value
