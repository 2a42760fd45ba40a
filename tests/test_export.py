"""Head and tail export with torch.export, and the exported halves compute what the eager ones do.

For the default detector (its shipped fine-tuned network and distilled bottleneck) and the
MobileNetV2 classifier recipe. Frames are small: the detector resizes to 320 px anyway.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from split.export import export_head, export_tail, tail_inputs
from split.recipes import build, default_recipe

PEOPLE = Path(__file__).resolve().parents[1] / "samples" / "people" / "000000000389.jpg"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _frame(size: tuple[int, int]) -> torch.Tensor:
    bgr = cv2.resize(cv2.imread(str(PEOPLE)), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1).float() / 255


def _assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", [default_recipe().name, "mobilenet_v2"])
def test_exported_halves_equal_the_eager_ones(name):
    model, _ = build(name)
    image = _frame((120, 160))
    head, tail = export_head(model, image).module(), export_tail(model, image).module()

    x = model.adapter.preprocess(image).tensor
    with torch.inference_mode():
        z, split_size = head(x)
        eager_z, eager_size = model.head(x)
        torch.testing.assert_close(z, eager_z, rtol=0, atol=0)
        assert split_size == eager_size
        # encode_message goes through Head.forward: the exported head's tensor is what is sent
        assert model.codec.encode(z).data == model.encode_message(image).tensor.data

        inputs = tail_inputs(model, image)
        expected = model.tail(*inputs)
        if model.family == "detector":
            assert len(expected["boxes"]) > 0, "the test needs detections to compare"
        _assert_same(tail(*inputs), expected)
        nothing = (torch.zeros_like(inputs[0]), *inputs[1:])  # a frame with (most likely) no detections
        _assert_same(tail(*nothing), model.tail(*nothing))

        with pytest.raises(Exception, match="original_size"):  # specialized to the example's sizes
            tail(inputs[0], *inputs[1:4], (240, 320))
