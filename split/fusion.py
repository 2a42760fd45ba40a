"""The edge's form of a split model: each BatchNorm folded into the convolution before it, and
the weights laid out channels-last.

Why: on the loaded edge the default's tail spent a tenth of its time in BatchNorm, a pass over
every activation that a folded convolution does for free, and its depthwise and strided
convolutions run faster on channels-last activations (oneDNN's layout), batched most of all.
Side by side on this machine (`bench/throughput.py --clients 1,4,16 --compare-plain`,
docs/scheduler.md), the unbatched and the batched server served 1.10-1.50x the frames a second
with it (1.29-1.50x at 1 and 4 clients, 1.10-1.13x at 16).

The function is the same to float tolerance (a fold changes rounding, not what is computed:
`tests/test_fusion.py` compares six recipes' outputs: SSDLite v2 and v3, three classifiers, Faster
R-CNN). `edge_form` keeps the head the plain network (it gives it its own copy), so what the edge
encodes is what the exported head gives. `device_form` is the same fold for a torch device: its head
and its local model too (a device pays for BatchNorm and NCHW as the edge does: the default's head
and whole model ran about 2 x faster in it, docs/device-form.md); ONNX Runtime makes the same
fold on the lean device, and the bytes the two send agree but for a rare rounding at a bin's edge.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops import FrozenBatchNorm2d

if TYPE_CHECKING:
    from split.api import SplitModel

__all__ = ["device_form", "edge_form", "fold_batchnorm", "fold_chain"]

# modules whose forward runs each of these (convolution, norm) pairs back to back (torchvision's source)
_NAMED_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    ResNet: (("conv1", "bn1"),),
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d (or torchvision's FrozenBatchNorm2d, the detection
    backbones' norm) that directly follows a Conv2d into that convolution (torch's
    `fuse_conv_bn_weights`), in place; the norm becomes an Identity. Returns how many were folded.

    Only where the order they run in is known without tracing: consecutive children of a
    Sequential or of torchvision's `IntermediateLayerGetter` (a detection backbone's body, whose
    returned layers keep their output), and the named pairs of torchvision's ResNet and its blocks
    (`conv1`/`bn1`, ...), whose forward is fixed; the ResNet backbones' convolutions are almost all
    in such pairs. A folded convolution is a new module in its slot: a convolution shared with
    another container keeps its weights there, and hooks on the old pair do not follow (the
    served networks register none)."""
    if isinstance(module, (nn.Sequential, IntermediateLayerGetter)):
        kept = set(getattr(module, "return_layers", ()))  # a returned layer's own output is read
        names = list(module._modules)
        pairs = [(a, b) for a, b in zip(names, names[1:]) if a not in kept]
    else:
        pairs = _NAMED_PAIRS.get(type(module), ())  # the exact class: a subclass may run them otherwise
    folded = 0
    for a, b in pairs:
        fused = _fused(module._modules.get(a), module._modules.get(b))
        if fused is not None:
            module._modules[a], module._modules[b] = fused, nn.Identity()
            folded += 1
    return folded + sum(fold_batchnorm(child) for child in module.children())


def _fused(conv: nn.Module | None, norm: nn.Module | None) -> nn.Conv2d | None:
    """A copy of `conv` with `norm` folded in, or None when the pair is not an eval-mode conv and norm."""
    if not isinstance(conv, nn.Conv2d) or conv.training:
        return None
    running = type(norm) is nn.BatchNorm2d and not norm.training and norm.running_mean is not None
    if not (running or type(norm) is FrozenBatchNorm2d):
        return None
    fused = copy.deepcopy(conv)  # what torch's `fuse_conv_bn_eval` does, for either norm
    fused.weight, fused.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                    norm.eps, norm.weight, norm.bias)
    return fused


def fold_chain(blocks: nn.ModuleList, taps: list[str | None]) -> int:
    """Fold a norm into the convolution before it where a split model's stages cut the pair apart
    (the default's `features.14.conv.2` and `.3` are two stages), in place; returns how many.

    A stage whose output is tapped keeps its convolution's output as it is (the tap reads it)."""
    folded = 0
    for i in range(len(blocks) - 1):
        fused = None if taps[i] is not None else _fused(blocks[i], blocks[i + 1])
        if fused is not None:
            blocks[i], blocks[i + 1] = fused, nn.Identity()
            folded += 1
    return folded


def edge_form(model) -> int:
    """Put a `SplitModel` in the edge's form, in place; returns the BatchNorms folded. Call it once,
    before serving, never on a model that trains.

    Folded: the network (what the full model runs), then the pairs the tail's stages cut apart
    (`fold_chain`). The head keeps the plain network: before the fold it gets its own copy of the
    layers it shares with the network, so what this process encodes stays the plain head's, the
    reference the exported head and the lean client are checked against (a torch device folds its
    own head: `device_form`).
    Not folded: the bottleneck, whose state's digest a device checks against its own
    (`SplitModel.bottleneck_digest`); its decoder is laid out channels-last only, which keeps every
    value and so the digest."""
    network = {id(m) for m in model.model.modules()}
    head = model.head.chain
    if any(id(b) in network for b in head.blocks):
        head.blocks = copy.deepcopy(head.blocks)
    folded = fold_batchnorm(model.model)
    folded += fold_chain(model.tail.chain.blocks, model.tail.chain.taps)
    for m in (model.model, model.tail):
        m.to(memory_format=torch.channels_last)
    return folded


def device_form(model: SplitModel) -> int:
    """Put a `SplitModel` in a torch device's form, in place; returns the BatchNorms folded. Call it once,
    after loading its checkpoint, never on a model that trains.

    As `edge_form`, and the head's stages too: the network (local mode, and a hedged run's resume),
    then each chain's own pairs (a checkpoint's head is its own modules, not the network's). A head
    made of the network's whole blocks folds with them in place and stays those modules, so a hedged
    run can still resume from its features (`TorchDevice.resumable`). A head stage that is a bare
    convolution or norm (a split inside `features.14.conv`) gets a folded copy instead, the network
    another: the outputs stay right, but `resumable` is then False and a hedged run starts from the
    image. Not folded: the bottleneck, whose
    digest the edge must find the same; its encoder's values are untouched, only its input's
    rounding moves, as it does between torch and ONNX Runtime."""
    folded = fold_batchnorm(model.model)
    for chain in (model.head.chain, model.tail.chain):
        folded += fold_batchnorm(chain)
        folded += fold_chain(chain.blocks, chain.taps)
    for m in (model.model, model.head.chain, model.tail):
        m.to(memory_format=torch.channels_last)
    return folded
