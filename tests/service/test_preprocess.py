import numpy as np
import pytest
from PIL import Image

from service.contract import InputSpec
from service.preprocess import prepare, resize_to_input, to_tensor


def spec(resize: str, width: int = 8, height: int = 8, channels: int = 1, **extra: object) -> InputSpec:
    return InputSpec(height=height, width=width, channels=channels, resize=resize,
                     mean=(0.0,) * channels, std=(1.0,) * channels, **extra)


@pytest.mark.parametrize(
    ("resize", "size", "scale", "offset"),
    [
        ("stretch", (16, 4), (0.5, 2.0), (0.0, 0.0)),
        ("stretch", (8, 8), (1.0, 1.0), (0.0, 0.0)),
        ("letterbox", (16, 4), (0.5, 0.5), (0.0, 3.0)),  # 8x2 pasted 3 rows down
        ("letterbox", (4, 16), (0.5, 0.5), (3.0, 0.0)),
        ("letterbox", (2, 2), (4.0, 4.0), (0.0, 0.0)),
        ("center_crop", (16, 4), (2.0, 2.0), (-12.0, 0.0)),  # 32x8, crop columns 12..20
        ("center_crop", (8, 8), (1.0, 1.0), (0.0, 0.0)),
    ],
)
def test_geometry_per_policy(resize: str, size: tuple[int, int], scale: tuple, offset: tuple) -> None:
    image = Image.new("L", size, 200)
    resized, geometry = resize_to_input(image, spec(resize))
    assert resized.size == (8, 8)
    assert (geometry.scale_x, geometry.scale_y) == pytest.approx(scale)
    assert (geometry.offset_x, geometry.offset_y) == pytest.approx(offset)
    assert (geometry.original_width, geometry.original_height) == size


def test_letterbox_pads_with_pad_value_and_to_original_inverts() -> None:
    resized, geometry = resize_to_input(Image.new("L", (16, 4), 255), spec("letterbox", pad_value=7))
    pixels = np.asarray(resized)
    assert (pixels[:3] == 7).all() and (pixels[5:] == 7).all() and (pixels[3:5] == 255).all()
    x, y = geometry.to_original(np.array([0.0, 8.0]), np.array([3.0, 5.0]))
    np.testing.assert_allclose(x, [0.0, 16.0])
    np.testing.assert_allclose(y, [0.0, 4.0])


def test_tensor_is_scaled_and_normalised_per_channel() -> None:
    rgb = InputSpec(height=2, width=2, channels=3, resize="stretch", mean=(0.5, 0.0, 1.0), std=(0.5, 1.0, 2.0))
    tensor = to_tensor(Image.new("RGB", (2, 2), (255, 0, 51)), rgb)
    assert tensor.shape == (3, 2, 2) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[:, 0, 0], [1.0, 0.0, (0.2 - 1.0) / 2.0], rtol=1e-6)


def test_grey_tensor_has_one_channel() -> None:
    tensor, _ = prepare(Image.new("L", (3, 5), 255), spec("stretch"))
    assert tensor.shape == (1, 8, 8)
    np.testing.assert_allclose(tensor, 1.0)


def test_wrong_colour_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode RGB"):
        prepare(Image.new("RGB", (8, 8)), spec("stretch"))


def test_geometry_refers_to_the_sent_size_when_the_decoder_shrank_the_image() -> None:
    letterbox = spec("letterbox", width=32, height=32)
    _, direct = prepare(Image.new("L", (640, 320)), letterbox)
    _, shrunk = prepare(Image.new("L", (160, 80)), letterbox, original_size=(640, 320))
    assert (shrunk.original_width, shrunk.original_height) == (640, 320)
    assert shrunk.scale_x == pytest.approx(direct.scale_x) and shrunk.offset_y == pytest.approx(direct.offset_y)
