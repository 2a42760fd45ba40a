"""The prefilter at run time: a small CNN on the head's features that says "nothing here, send nothing".

Why it exists (hnd-ghnd's "neural filter", REFERENCES.md): many frames hold nothing the edge
would detect. The device computes the head's features anyway, so a few tiny convolutions on
them decide, before the bottleneck and the network, whether the frame is worth sending. A
filtered frame costs no bytes and no edge compute; its result is "no detections".

The network, and why (training and the threshold: `split.train.prefilter`):

- **Input = the split point's output, before the bottleneck** (`head_features`): that tensor is
  computed on the device in every split frame, so the prefilter adds only its own convs. It is
  also richer than the bottleneck's few channels, and does not change when a bottleneck is
  retrained.
- **Adaptive average pool to a fixed grid (32x32 by default)**: the features are already
  strided (stride 8 for the default recipe: 40x40 at 320 px), so hnd-ghnd's 64x64 pool of the
  stride-4 stem output corresponds to 32x32 here; a fixed grid makes the cost independent of
  input size. 16x16 costs a quarter but blurred small objects away in our trials (held-out
  ROC-AUC 0.97-0.99 against 1.0 at 32x32 on the synthetic task of the tests).
- **Per-channel standardization stored in the module** (`feature_mean`, `feature_std`): the
  scale of head features varies by orders of magnitude between checkpoints (a random-init
  MobileNetV3 head outputs values around 1e-8), so the filter learns on standardized inputs and
  carries the statistics with its weights.
- **Three 3x3 convs (the first with batch norm), strides 1-2-2**: enough to see local
  contrast on the grid; batch norm after the first conv made held-out ranking clearly better
  on small training sets (a hundred maps) in our trials. Cost: about 2 ms per frame on one
  CPU thread here, against about 18 ms for the default recipe's head itself.
- **Global average + max pool before the linear layer**: "is there an object anywhere" is an
  existence question; max pooling keeps a small, localized response that averaging dilutes.
- **One logit** rather than hnd-ghnd's two-class softmax: the same model with half the output.
- **State carries the decision**: `threshold`, `target_classes` (empty = every class), the
  pooling grid, the dropped border and the feature statistics are buffers, so `state_dict()`
  alone rebuilds a working filter (`load_prefilter`; checkpoint key "prefilter").

At run time the integrator runs `head.chain`, asks `prefilter.keep(features)`, and only on
True runs `head.encoder` and the codec; a dropped frame gets an empty result marked
`filtered: true`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from split.api import SplitModel
from split.images import ImageLike, load_image

__all__ = ["Prefilter", "head_features", "load_prefilter"]


class Prefilter(nn.Module):
    """P(frame holds an object of the target classes), from the head's features.

    `threshold` is a probability: a frame is kept when P >= threshold. `target_classes` are
    the class ids the filter was trained for (empty: any class); they are recorded so a
    checkpoint says what "object" meant, the filter itself does not read them.
    """

    def __init__(self, in_channels: int, hidden: int = 32, threshold: float = 0.5,
                 target_classes: Iterable[int] | None = None, grid: int = 32, border: int = 1) -> None:
        super().__init__()
        if in_channels < 1 or hidden < 2 or grid < 4 or border < 0:
            raise ValueError(f"need in_channels >= 1, hidden >= 2, grid >= 4, border >= 0; "
                             f"got {in_channels}, {hidden}, {grid}, {border}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
        self.in_channels = int(in_channels)
        self.hidden = int(hidden)
        last = max(hidden // 2, 1)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, last, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(2 * last, 1)
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        classes = sorted({int(c) for c in target_classes}) if target_classes is not None else []
        self.register_buffer("target_classes", torch.tensor(classes, dtype=torch.long))
        self.register_buffer("grid", torch.tensor(int(grid), dtype=torch.long))
        self.register_buffer("border", torch.tensor(int(border), dtype=torch.long))
        self.register_buffer("feature_mean", torch.zeros(in_channels))
        self.register_buffer("feature_std", torch.ones(in_channels))

    # -- the network --------------------------------------------------------------------------
    def pool(self, features: Tensor) -> Tensor:
        """Head features [N, C, h, w] (any h, w) -> [N, C, grid, grid]; done once per frame.

        The outermost `border` feature pixels are dropped first: there the head's zero padding
        answers to the frame's overall brightness rather than to its content, and with weak
        (e.g. random-init) features that artifact is the largest signal in the map.
        """
        if features.dim() == 3:
            features = features[None]
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(f"prefilter expects features [N, {self.in_channels}, h, w], got {list(features.shape)}")
        b, g = int(self.border), int(self.grid)
        if b and min(features.shape[-2:]) > 2 * b + 2:
            features = features[..., b:-b, b:-b]
        return F.adaptive_avg_pool2d(features.float(), (g, g))

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        """Logits [N] from already pooled features (training precomputes the pooling)."""
        x = (pooled - self.feature_mean.view(1, -1, 1, 1)) / self.feature_std.view(1, -1, 1, 1)
        x = self.features(x)
        x = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.classifier(x).squeeze(1)

    def forward(self, features: Tensor) -> Tensor:
        """Logits [N] = log-odds that each frame holds an object of the target classes."""
        return self.forward_pooled(self.pool(features))

    # -- decisions ----------------------------------------------------------------------------
    @torch.no_grad()
    def probability(self, features: Tensor) -> Tensor:
        """P(object) per frame, [N]; always in eval mode (batch norm on its running stats)."""
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self(features))
        finally:
            self.train(was_training)

    def keep(self, features: Tensor) -> bool:
        """Whether one frame ([1, C, h, w] or [C, h, w]) is worth sending to the edge."""
        p = self.probability(features)
        if p.numel() != 1:
            raise ValueError(f"keep() decides for one frame; got {p.numel()}")
        return bool(p.item() >= float(self.threshold))

    @property
    def classes(self) -> list[int] | None:
        """The target class ids, or None for "any class"."""
        return self.target_classes.tolist() or None

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, hidden={self.hidden}, grid={int(self.grid)}, "
                f"border={int(self.border)}, threshold={float(self.threshold):.4f}, target_classes={self.classes or 'all'}")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # target_classes has a length of its own: take the checkpoint's instead of failing on
        # a shape mismatch, so `load_state_dict` works into a filter built for other classes.
        key = prefix + "target_classes"
        if key in state_dict:
            self.target_classes = torch.empty_like(state_dict[key], dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def load_prefilter(state: dict[str, Any], in_channels: int) -> Prefilter:
    """Rebuild a prefilter from its `state_dict()` (or from a checkpoint holding "prefilter").

    `in_channels` is the split point's channel count (`SplitModel.split_channels`): checked
    against the state, so a filter trained for another split point is refused by name.
    """
    if "prefilter" in state and isinstance(state["prefilter"], dict):
        state = state["prefilter"]
    try:
        w = state["features.0.weight"]
        grid = int(state["grid"])
        border = int(state["border"])
        classes = [int(c) for c in state["target_classes"].tolist()]
        threshold = float(state["threshold"])
    except KeyError as exc:
        raise ValueError(f"not a prefilter state: missing {exc.args[0]!r}") from None
    if int(w.shape[1]) != int(in_channels):
        raise ValueError(f"prefilter was trained on {int(w.shape[1])}-channel features; "
                         f"this split point has {in_channels}")
    pf = Prefilter(in_channels, hidden=int(w.shape[0]), threshold=threshold, target_classes=classes, grid=grid,
                   border=border)
    pf.load_state_dict(state)
    return pf.eval()


@torch.no_grad()
def head_features(split_model: SplitModel, image: ImageLike) -> Tensor:
    """What the prefilter sees: preprocess + the head's stages up to the split point.

    No bottleneck: on the device this tensor exists anyway in split mode, so the prefilter
    costs only its own convs. (no_grad, not inference_mode: training reuses the tensors.)
    """
    x = split_model.adapter.preprocess(load_image(image)).tensor
    return split_model.head.chain(x, OrderedDict())

