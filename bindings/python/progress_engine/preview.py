"""Turns the images update_preview() accepts into packed 8-bit pixel rows, importing neither numpy nor
PIL: arrays are read through __array_interface__ and the buffer protocol, PIL images through
.mode / .size / .tobytes()."""

from __future__ import annotations

from typing import Any, Tuple

from .errors import InvalidArgumentError

# PIL modes the engine takes as they are; any other mode is converted first.
_PIL_CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}
_CHANNELS = (1, 3, 4)


def to_pixels(image: Any) -> Tuple[bytes, int, int, int]:
    """(pixels, width, height, channels): rows packed (stride = width * channels), gray, RGB or RGBA.

    `image` is a numpy-style uint8 array (H×W, H×W×1, H×W×3, H×W×4), a PIL image, or a
    `(buffer, width, height, channels)` tuple of packed rows."""
    if isinstance(image, tuple):
        return _from_tuple(image)
    # PIL first: Pillow images also expose __array_interface__, but not as a buffer.
    if hasattr(image, "mode") and hasattr(image, "size") and hasattr(image, "tobytes"):
        return _from_pil(image)
    interface = getattr(image, "__array_interface__", None)
    if interface is not None:
        return _from_array(image, interface)
    raise TypeError(
        "update_preview() takes a uint8 array (H×W, H×W×3, H×W×4), a PIL image or a "
        f"(buffer, width, height, channels) tuple, not {type(image).__name__}"
    )


def _from_tuple(image: tuple) -> Tuple[bytes, int, int, int]:
    if len(image) != 4:
        raise TypeError(f"a preview tuple is (buffer, width, height, channels); got {len(image)} items")
    buffer, width, height, channels = image
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise InvalidArgumentError(f"preview width and height must be positive integers, got {width!r} x {height!r}")
    pixels = buffer if isinstance(buffer, bytes) else memoryview(buffer).tobytes()
    return _checked(pixels, width, height, channels)


def _from_array(image: Any, interface: dict) -> Tuple[bytes, int, int, int]:
    typestr = interface["typestr"]
    if typestr[1:] != "u1":
        raise InvalidArgumentError(f"a preview array must be uint8, got typestr {typestr!r}")
    shape = tuple(interface["shape"])
    if len(shape) == 2:
        (height, width), channels = shape, 1
    elif len(shape) == 3:
        height, width, channels = shape
    else:
        raise InvalidArgumentError(f"a preview array must be H×W, H×W×3 or H×W×4, got shape {shape}")
    # tobytes() copies in C order, so strided views and slices work too.
    return _checked(memoryview(image).tobytes(), width, height, channels)


def _from_pil(image: Any) -> Tuple[bytes, int, int, int]:
    # A lazily loaded image reads its file here: one still being written (a renderer's newest frame) raises
    # OSError, and Pillow refuses some conversions with ValueError. Either is a bad image, refused like one.
    try:
        return _read_pil(image)
    except (OSError, ValueError) as error:
        raise InvalidArgumentError(f"the PIL image ({getattr(image, 'mode', '?')}) could not be read: {error}") from None


def _read_pil(image: Any) -> Tuple[bytes, int, int, int]:
    width, height = image.size
    if image.mode in ("I;16", "I;16L", "I;16B"):
        # 16-bit gray: keep the high byte of each sample (convert("L") would clip everything above 255).
        data = image.tobytes()
        high = data[0::2] if image.mode == "I;16B" else data[1::2]
        return _checked(high, width, height, 1)
    if image.mode == "La":
        image = image.convert("LA")  # Pillow has no La -> RGBA conversion; LA -> RGBA below
    if image.mode not in _PIL_CHANNELS:
        # Palette images may be transparent; every other mode converts losslessly enough to RGB.
        image = image.convert("RGBA" if image.mode in ("P", "PA", "LA", "RGBa") else "RGB")
    return _checked(image.tobytes(), width, height, _PIL_CHANNELS[image.mode])


def _checked(pixels: bytes, width: int, height: int, channels: int) -> Tuple[bytes, int, int, int]:
    if channels not in _CHANNELS:
        raise InvalidArgumentError(f"a preview has 1 (gray), 3 (RGB) or 4 (RGBA) channels, got {channels!r}")
    expected = width * height * channels
    if len(pixels) != expected:
        raise InvalidArgumentError(
            f"preview buffer holds {len(pixels)} bytes; {width}x{height} with {channels} channel(s) needs {expected}"
        )
    return pixels, width, height, channels
