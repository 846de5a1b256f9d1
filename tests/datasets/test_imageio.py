"""Decoding: every image mode becomes RGB, masks keep raw values, and broken files give messages naming them."""

from __future__ import annotations

import numpy as np
import pytest
from fakes.common import corrupt, pixels, region, truncate, write_image, write_mask, write_tiff_pillow_cannot_open
from PIL import Image

from zsad_bench.imageio import (
    ImageReadError,
    MaskSizeError,
    check_mask_size,
    image_hw,
    load_image,
    load_mask,
    read_array,
)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1", "CMYK"])
def test_modes_become_rgb(tmp_path, mode):
    path = tmp_path / f"x_{mode}.png" if mode != "CMYK" else tmp_path / "x.jpg"
    Image.fromarray(pixels(0)).convert(mode).save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.size == (16, 16)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    arr = (np.arange(16 * 16).reshape(16, 16) * 200).astype(np.uint16)  # up to 51000
    Image.fromarray(arr).save(tmp_path / "g16.png")
    out = np.asarray(load_image(tmp_path / "g16.png"))
    assert out.dtype == np.uint8
    assert out[..., 0].min() == 0
    assert out[..., 0].max() == 255
    assert len(np.unique(out[..., 0])) > 200  # Pillow's convert("RGB") would clip nearly all to 255


def test_tiff_pillow_cannot_open_is_read_with_tifffile(tmp_path):
    from PIL import UnidentifiedImageError

    src = pixels(3)
    path = write_tiff_pillow_cannot_open(tmp_path / "1.tif", src.astype(float))
    with pytest.raises(UnidentifiedImageError):
        Image.open(path)
    np.testing.assert_array_equal(np.asarray(load_image(path)), src)
    assert image_hw(path) == (16, 16)


def test_float_images_in_unit_range_are_scaled(tmp_path):
    src = pixels(4)
    path = write_tiff_pillow_cannot_open(tmp_path / "u.tif", src / 255.0)
    assert np.abs(np.asarray(load_image(path)).astype(int) - src).max() <= 1


def test_class_id_masks_are_anomalous_above_zero(tmp_path):
    area = region(1)
    arr = np.where(area, 2, 0).astype(np.uint8)  # VisA: class id 2
    arr[0, 0] = 1
    Image.fromarray(arr).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png")
    assert mask.dtype == np.bool_
    assert mask.sum() == area.sum() + (not area[0, 0])
    assert not load_mask(tmp_path / "m.png", threshold=2).any()


def test_palette_masks_use_their_indices(tmp_path):
    arr = np.zeros((16, 16), np.uint8)
    arr[2:5, 2:5] = 1
    img = Image.fromarray(arr, "P")
    img.putpalette([0, 0, 0, 0, 0, 1] + [0] * 762)  # index 1 is nearly black: its luminance would be 0
    img.save(tmp_path / "p.png")
    assert load_mask(tmp_path / "p.png").sum() == 9


def test_rgb_mask_counts_any_channel(tmp_path):
    arr = np.zeros((16, 16, 3), np.uint8)
    arr[1, 1, 2] = 255
    Image.fromarray(arr).save(tmp_path / "rgb.png")
    assert load_mask(tmp_path / "rgb.png").sum() == 1


def test_jpeg_mask_needs_a_threshold(tmp_path):
    area = region(5)
    path = write_mask(tmp_path / "m.jpg", area)
    assert load_mask(path, 0).sum() > area.sum()  # JPEG ringing
    np.testing.assert_array_equal(load_mask(path, 127), area)


def test_mask_keeps_its_resolution(tmp_path):
    path = write_mask(tmp_path / "m.png", region(2, (40, 24)))
    assert load_mask(path).shape == (40, 24)
    assert read_array(path).shape == (40, 24)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_corrupt_file_names_the_file(tmp_path, ext):
    path = corrupt(write_image(tmp_path / f"bad{ext}", 1))
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert err.value.kind == "unreadable"
    assert str(path) in str(err.value)
    assert "Re-extract" in str(err.value)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_file_is_reported_as_truncated(tmp_path, ext):
    path = write_image(tmp_path / f"t{ext}", 1, size=(64, 64))
    truncate(path)
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert err.value.kind == "truncated"
    assert str(path) in str(err.value)
    assert "truncated" in str(err.value)


def test_truncated_mask_is_reported(tmp_path):
    path = truncate(write_mask(tmp_path / "m.png", region(1, (64, 64))))
    with pytest.raises(ImageReadError, match="truncated"):
        load_mask(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ImageReadError) as err:
        load_mask(tmp_path / "gone_mask.png")
    assert err.value.kind == "missing"
    assert "gone_mask.png" in str(err.value)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty") as err:
        load_image(empty)
    assert err.value.kind == "empty"


def test_image_read_error_is_a_value_error():
    assert issubclass(ImageReadError, ValueError)
    assert issubclass(MaskSizeError, ImageReadError)


def test_mask_size_check_names_both_files(tmp_path):
    check_mask_size(tmp_path / "a.png", tmp_path / "a_mask.png", (16, 16), (16, 16))
    with pytest.raises(MaskSizeError) as err:
        check_mask_size(tmp_path / "a.png", tmp_path / "a_mask.png", (16, 16), (32, 16))
    msg = str(err.value)
    assert "a_mask.png" in msg
    assert "a.png" in msg
    assert "16x32" in msg
    assert err.value.kind == "size"


def test_image_hw_reads_only_the_header(tmp_path):
    path = write_image(tmp_path / "x.png", 1, size=(20, 12))
    assert image_hw(path) == (20, 12)
    with pytest.raises(ImageReadError):
        image_hw(corrupt(tmp_path / "x.png"))
