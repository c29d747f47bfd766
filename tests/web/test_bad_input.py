"""The bad-input corpus through the API: every bad upload gets a 4xx JSON error a person understands,
every odd-but-valid one is accepted, and the server keeps serving."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.shared.test_imaging import encode, png_header_only, seven


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    return encode(seven().rotate(90, expand=True).convert("RGB"), "JPEG", exif=exif)


def _animated_gif() -> bytes:
    frames = [seven().convert("P"), Image.new("P", (120, 160), 255)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def _transparent_png() -> bytes:
    ink = np.asarray(seven())
    rgba = np.zeros((*ink.shape, 4), np.uint8)
    rgba[..., 3] = 255 - ink  # black ink, opaque where drawn; transparent paper (its RGB is black too)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


PNG = encode(seven(), "PNG")
JPEG = encode(seven().convert("RGB"), "JPEG")

BAD = {
    "zero-byte file": ((b"", "a.png"), 400, "empty_file"),
    "text named .png": ((b"just some text, honestly\n" * 20, "a.png"), 415, "not_an_image"),
    "HTML named .png": ((b"<!doctype html><html><body>hi</body></html>", "a.png"), 415, "not_an_image"),
    "SVG named .png": ((b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "a.png"), 415,
                       "not_an_image"),
    "PDF named .png": ((b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "a.png"), 415, "not_an_image"),
    "truncated PNG": ((PNG[: len(PNG) // 2], "a.png"), 400, "truncated"),
    "truncated JPEG": ((JPEG[: len(JPEG) // 2], "a.jpg"), 400, "truncated"),
    "decompression bomb": ((png_header_only(100_000, 100_000), "bomb.png"), 400, "too_large"),
    "20000x20000 image": ((png_header_only(20_000, 20_000), "big.png"), 400, "too_large"),
    "1x1 image": ((encode(Image.new("L", (1, 1), 0), "PNG"), "dot.png"), 400, "too_small"),
    "no ink at all": ((encode(Image.new("RGB", (200, 200), (250, 250, 250)), "PNG"), "blank.png"), 400, "no_ink"),
}
VALID = {
    "16-bit PNG": encode(Image.fromarray(np.asarray(seven()).astype(np.uint16) * 257), "PNG"),
    "CMYK JPEG": encode(seven().convert("CMYK"), "JPEG"),
    "palette PNG": encode(seven().convert("P"), "PNG"),
    "transparent PNG": _transparent_png(),
    "animated GIF": _animated_gif(),
    "EXIF-rotated JPEG": _exif_rotated_jpeg(),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_upload_gets_a_clear_4xx_and_the_server_keeps_serving(client, name):
    (data, filename), status, code = BAD[name]
    resp = client.post("/predict", data={"file": (io.BytesIO(data), filename)}, content_type="multipart/form-data")

    assert resp.status_code == status, resp.get_json()
    error = resp.get_json()["error"]
    assert error["code"] == code
    assert len(error["message"]) > 10 and "Traceback" not in error["message"]
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("name", VALID)
def test_odd_but_valid_images_are_accepted(client, name):
    resp = client.post("/predict", data={"file": (io.BytesIO(VALID[name]), "x")}, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()


def test_request_shapes_that_are_not_uploads(client):
    empty = client.post("/predict", data=b"", content_type="multipart/form-data; boundary=x")
    assert empty.status_code == 400 and empty.get_json()["error"]["code"] == "missing_file"
    wrong_type = client.post("/predict", json={"file": "aGVsbG8="})
    assert wrong_type.status_code == 415 and "multipart/form-data" in wrong_type.get_json()["error"]["message"]
    assert client.get("/predict").status_code == 405
    assert client.get("/predict").get_json()["error"]["code"] == "method_not_allowed"
