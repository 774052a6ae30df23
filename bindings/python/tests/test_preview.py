"""update_preview(): the image forms it takes, converted without numpy or PIL being imported."""

from __future__ import annotations

import array
import asyncio

import pytest

from progress_engine import InvalidArgumentError, ProgressWarning
from progress_engine.preview import to_pixels


class FakePILImage:
    """The part of PIL.Image.Image that the binding uses (duck typing: PIL is not a dependency)."""

    def __init__(self, mode, size, data):
        self.mode, self.size, self._data = mode, size, data
        self.converted_to = None

    def tobytes(self):
        return self._data

    def convert(self, mode):
        width, height = self.size
        image = FakePILImage(mode, self.size, bytes(width * height * {"RGB": 3, "RGBA": 4}[mode]))
        self.converted_to = mode
        return image


@pytest.fixture
def task(tracker):
    tracker.create_task_progress_sync("t", "sdxl", "image_generation")
    return "t"


def test_tuple_of_buffer_and_size():
    assert to_pixels((b"\x01\x02\x03" * 4, 2, 2, 3)) == (b"\x01\x02\x03" * 4, 2, 2, 3)
    assert to_pixels((bytearray(6), 3, 2, 1)) == (bytes(6), 3, 2, 1)
    assert to_pixels((array.array("B", range(8)), 1, 2, 4))[0] == bytes(range(8))


@pytest.mark.parametrize(
    "image, error, fragment",
    [
        ((b"\0" * 11, 2, 2, 3), InvalidArgumentError, "needs 12"),
        ((b"\0" * 8, 2, 2, 2), InvalidArgumentError, "channels"),
        ((b"\0" * 12, 0, 2, 3), InvalidArgumentError, "positive"),
        ((b"\0" * 12, 2.0, 2, 3), InvalidArgumentError, "positive"),
        ((b"\0" * 12, 2, 2), TypeError, "(buffer, width, height, channels)"),
        ("not an image", TypeError, "str"),
    ],
)
def test_bad_arguments_are_refused_in_the_binding(image, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        to_pixels(image)


def test_numpy_arrays():
    np = pytest.importorskip("numpy")
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert to_pixels(gray) == (gray.tobytes(), 3, 2, 1)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert to_pixels(rgb) == (rgb.tobytes(), 3, 2, 3)
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    assert to_pixels(rgba)[1:] == (5, 4, 4)
    sliced = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)[::2, 1:5]  # strided: copied in C order
    assert to_pixels(sliced) == (np.ascontiguousarray(sliced).tobytes(), 4, 2, 3)
    with pytest.raises(InvalidArgumentError, match="uint8"):
        to_pixels(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match="shape"):
        to_pixels(np.zeros((2, 2, 3, 1), dtype=np.uint8))
    with pytest.raises(InvalidArgumentError, match="channels"):
        to_pixels(np.zeros((2, 2, 2), dtype=np.uint8))


def test_pil_images():
    assert to_pixels(FakePILImage("RGB", (2, 1), b"\1\2\3\4\5\6")) == (b"\1\2\3\4\5\6", 2, 1, 3)
    assert to_pixels(FakePILImage("L", (3, 1), b"\7\7\7"))[3] == 1
    palette = FakePILImage("P", (2, 2), bytes(4))
    assert to_pixels(palette)[3] == 4 and palette.converted_to == "RGBA"
    cmyk = FakePILImage("CMYK", (2, 2), bytes(16))
    assert to_pixels(cmyk)[3] == 3 and cmyk.converted_to == "RGB"
    with pytest.raises(InvalidArgumentError, match="needs 12"):
        to_pixels(FakePILImage("RGB", (2, 2), bytes(5)))


def test_update_preview_reaches_the_engine(tracker, task):
    # Before progress crosses the first milestone (25 %) no preview is due: every form is accepted and
    # nothing changes; bad buffers are still refused by the binding.
    before = tracker.get_task_progress_sync(task)
    tracker.update_preview_sync(task, (bytes(2 * 2 * 3), 2, 2, 3))
    tracker.update_preview_sync(task, FakePILImage("RGBA", (1, 1), bytes(4)))
    with pytest.warns(ProgressWarning, match="needs 12") as shown:  # a refusal: the runner goes on
        tracker.update_preview_sync(task, (bytes(3), 2, 2, 3))
    assert isinstance(shown[0].message.error, InvalidArgumentError)
    asyncio.run(tracker.update_preview(task_id=task, image=(bytes(4), 2, 2, 1)))  # the seed's awaitable form
    assert tracker.get_task_progress_sync(task) == before
