"""The ground floor: reading images, writing files atomically, encoding PNG and JSON, paths.

Every module that reads or writes a file does it through here, so that each of these is done one
way (one image reader, one atomic write) and no module borrows a helper from one higher up.
Torch and Pillow only: nothing from fvis but its errors.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import save as save_tensors

from fvis.errors import UserError

MAX_IMAGE_PIXELS = 89_478_485
"""The largest image fvis reads or writes: Pillow's own default limit (about 9459 x 9459; 1 GiB
as float32 RGB), so every PNG fvis writes (grid.png, sheet.png) it and Pillow-based tools can
read back.

Checked against the size in the file's header, before any pixel is decoded, so a small file
that decodes to a huge image (a decompression bomb) costs nothing; Pillow's own check (a warning
up to twice its limit) never fires first: fvis has one limit and one message.
"""
PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")  # the size in Pillow's DecompressionBombError
NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+,\s*)*-?[\d.eE+-]+)\s*\]")
UMASK = os.umask(0)
os.umask(UMASK)


def resolve(base: Path, path: Path) -> Path:
    """`path` as given if absolute, else relative to `base` (a config's folder)."""
    return path if path.is_absolute() else base / path


# ----------------------------------------------------------------------------- reading

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def image_files(folder: Path, pattern: str = "**/*") -> list[Path]:
    """The image files (by suffix) under `folder` that match a glob `pattern`, sorted."""
    return sorted(
        p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def read_image(
    path: Path,
    mode: Literal["L", "RGB"] | None = "RGB",
    size: tuple[int, int] | None = None,
    *,
    fit: Literal["stretch", "crop"] = "stretch",
    resample: Image.Resampling = Image.Resampling.BILINEAR,
    dtype: torch.dtype = torch.float32,
    data: bytes | None = None,
) -> torch.Tensor:
    """An image file as [C, H, W] in [0, 1]: grey (`mode` "L"), RGB, or (None) grey if the file
    is grey and RGB otherwise; alpha is dropped.

    With `size` (H, W) Pillow resamples the 8-bit image: 'stretch' to exactly `size`, 'crop' by
    the shorter side and then the centre cropped. `data` is the file's bytes where the caller
    has read them already (`path` then only names the file in errors). An unreadable file, or
    one of more than MAX_IMAGE_PIXELS pixels (refused from its header, undecoded), is a
    UserError naming it.
    """
    try:
        with warnings.catch_warnings():  # Pillow's (a bomb, corrupt EXIF) are not printed
            warnings.simplefilter("ignore")
            with Image.open(BytesIO(data) if data is not None else path) as image:
                _check_size(path, image.size)  # from the header: nothing decoded yet
                target = mode or ("L" if image.mode == "L" else "RGB")
                pixels = image.convert(target)
                _check_size(path, pixels.size)  # a frame picked on loading (ICO) may be larger
                if size is not None:
                    pixels = _fitted(pixels, size, fit, resample)
                w, h = pixels.size
                raw = torch.frombuffer(bytearray(pixels.tobytes()), dtype=torch.uint8)
    except Image.DecompressionBombError as exc:  # Pillow's limit (twice its default) is above ours
        found = PILLOW_PIXELS.search(str(exc))
        raise too_large(path, int(found[1]) if found else None) from None
    except UnidentifiedImageError:
        raise UserError(f"{path}: not a readable image (no image format Pillow knows)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None
    return raw.view(h, w, -1).permute(2, 0, 1).to(dtype) / 255


def _check_size(path: Path, size: tuple[int, int]) -> None:
    """Refuse an image of more than MAX_IMAGE_PIXELS pixels."""
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise too_large(path, size[0] * size[1])


def too_large(path: Path, pixels: int | None) -> UserError:
    """The one message for an image over MAX_IMAGE_PIXELS (`pixels`: its size, where known)."""
    size = f"{pixels:,} pixels" if pixels else "more pixels than Pillow allows"
    return UserError(
        f"{path}: an image of {size}, over fvis's limit of {MAX_IMAGE_PIXELS:,} (a "
        "decompression bomb?); not decoded: use a smaller image"
    )


def _fitted(
    image: Image.Image, size: tuple[int, int], fit: str, resample: Image.Resampling
) -> Image.Image:
    """`image` resized to `size` (H, W): stretched, or by its shorter side and centre-cropped."""
    h, w = size
    if fit == "stretch":
        return image.resize((w, h), resample)
    k = max(h / image.size[1], w / image.size[0])
    image = image.resize(
        (max(w, round(image.size[0] * k)), max(h, round(image.size[1] * k))), resample
    )
    left, top = (image.size[0] - w) // 2, (image.size[1] - h) // 2
    return image.crop((left, top, left + w, top + h))


# ----------------------------------------------------------------------------- writing


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, then rename it into place, so a reader
    never sees half a file; a failure (full disk, no permission) leaves the old file, or none,
    and no temporary behind."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- encoding


def to_pil(image: torch.Tensor, alpha: bool = False) -> Image.Image:
    """[C, H, W] in [0, 1] -> an 8-bit image: 1 channel grey, 3 RGB, otherwise the first three
    channels (missing ones black). With `alpha`, the last channel is opacity: grey + alpha -> LA,
    RGB + alpha -> RGBA."""
    x = (image.clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8)
    if alpha and x.shape[0] in (2, 4):
        mode = "LA" if x.shape[0] == 2 else "RGBA"
        return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy(), mode=mode)
    if x.shape[0] == 1:
        return Image.fromarray(x[0].numpy(), mode="L")
    if x.shape[0] < 3:
        x = torch.cat([x, torch.zeros(3 - x.shape[0], *x.shape[1:], dtype=torch.uint8)])
    return Image.fromarray(x[:3].permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def png_bytes(image: Image.Image) -> bytes:
    """An image encoded as PNG, in memory (unoptimized: quicker, and how the goldens were made)."""
    buffer = BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def tensors_bytes(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> bytes:
    """Tensors (contiguous) and string metadata as a safetensors file, in memory, canonical:
    the same tensors and metadata give the same bytes.

    safetensors writes its metadata map in hash order, which changes from process to process;
    the layout is `u64 little-endian header length | JSON header (space-padded to 8 bytes) |
    data`, and entries locate their data by explicit offsets, so the header is written again
    with sorted keys.
    """
    blob = save_tensors(tensors, metadata=metadata)
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + size :]


def to_json(data: Any) -> bytes:
    """Indented JSON with lists of numbers kept on one line, so long histories stay readable."""
    text = json.dumps(data, indent=2)
    return NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text).encode()
