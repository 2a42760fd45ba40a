"""Class names come from torchvision's weight metadata (no download) and a fine-tuned subset wins."""

import pytest

from split.labels import coco_category, label_names


def test_coco_names_and_ids():
    assert coco_category("person") == 1 and coco_category(" 3 ") == 3
    with pytest.raises(ValueError, match="unknown COCO category 'persn'"):
        coco_category("persn")
    names = label_names("detector")
    assert names[1] == "person" and names[90] == "toothbrush" and "N/A" not in names.values()


def test_classifier_names_and_a_fine_tuned_subset():
    assert label_names("classifier")[0] == "tench" and len(label_names("classifier")) == 1000
    assert label_names("detector", {1: "person"}) == {1: "person"}
