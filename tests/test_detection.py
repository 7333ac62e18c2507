"""Attention injected into detectors with identity start: torchvision's Faster R-CNN (MobileNetV3-FPN)
and a small YOLO-style head of C3 blocks. The detector computes exactly what it did before, then trains
(finite losses, every attention parameter gets a gradient) and evaluates."""
import copy

import pytest
import torch
import torchvision
from torch import nn

import attn_zoo
from attn_zoo.attention._start import IdentityStart
from attn_zoo.backbones.placement import is_attention_path


def attention_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if is_attention_path(name)}


def train_steps(model: nn.Module, loss_of, steps: int = 2) -> set[str]:
    """Plain SGD steps; the attention parameters that got a non-zero gradient in any of them."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    learning = set()
    for _ in range(steps):
        optimizer.zero_grad()
        losses = loss_of(model)
        assert all(torch.isfinite(loss) for loss in losses.values()), losses
        sum(losses.values()).backward()
        learning |= {n for n, p in attention_parameters(model).items() if p.grad is not None and p.grad.abs().max() > 0}
        optimizer.step()
    return learning


def faster_rcnn() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=128)


@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_faster_rcnn_with_identity_start_attention_after_each_fpn_output(attention):
    model = faster_rcnn()
    plain = copy.deepcopy(model)
    _, places = attn_zoo.inject(model, attention, after=r"re:backbone\.fpn\.layer_blocks\.\d+", init="identity")
    assert places == ["backbone.fpn.layer_blocks.0", "backbone.fpn.layer_blocks.1"]
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 128, 128, generator=generator) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 5.0, 120.0, 60.0]]), "labels": torch.tensor([2])}]
    batch = torch.stack(images)
    for train in (False, True):  # the features every head reads: exactly the plain detector's
        model.train(train), plain.train(train)
        with torch.no_grad():
            ours, theirs = model.backbone(batch), plain.backbone(batch)
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    learning = train_steps(model.train(), lambda m: m(images, targets))
    assert learning == set(attention_parameters(model))  # the gates' own ones from the second step on
    detections = model.eval()(images)
    assert len(detections) == 2 and all(d["boxes"].shape[1:] == (4,) for d in detections)


def conv(c_in: int, c_out: int, k: int = 1, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = conv(c, c, 1), conv(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C3(nn.Module):
    """YOLOv5's CSP block: two 1x1 branches, bottlenecks on one, concatenated, 1x1."""

    def __init__(self, c_in: int, c_out: int, n: int = 1):
        super().__init__()
        hidden = c_out // 2
        self.cv1, self.cv2, self.cv3 = conv(c_in, hidden), conv(c_in, hidden), conv(2 * hidden, c_out)
        self.m = nn.Sequential(*(Bottleneck(hidden) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], dim=1))


class TinyYolo(nn.Module):
    """A stride-8/16 backbone, a C3 per scale in the neck, 1x1 detect convs: (x, y, w, h, obj, classes)."""

    def __init__(self, classes: int = 2, anchors: int = 2):
        super().__init__()
        self.stem = nn.Sequential(conv(3, 16, 3, 2), conv(16, 32, 3, 2), conv(32, 32, 3, 2))
        self.down = conv(32, 64, 3, 2)
        self.neck = nn.ModuleList([C3(32, 32), C3(64, 64)])
        self.detect = nn.ModuleList([nn.Conv2d(c, anchors * (5 + classes), 1) for c in (32, 64)])

    def forward(self, x):
        p3 = self.stem(x)
        features = [self.neck[0](p3), self.neck[1](self.down(p3))]
        return [head(f) for head, f in zip(self.detect, features)]


@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_yolo_style_head_with_identity_start_attention_after_each_c3(attention):
    torch.manual_seed(0)
    model = TinyYolo()
    plain = copy.deepcopy(model)
    _, places = attn_zoo.inject(model, attention, after=r"re:neck\.\d+", init="identity", reduction=4)
    assert places == ["neck.0", "neck.1"] and all(isinstance(model.neck[i].attention, IdentityStart) for i in (0, 1))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for train in (False, True):
        model.train(train), plain.train(train)
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(model(x), plain(x)))
    targets = [torch.rand(p.shape, generator=torch.Generator().manual_seed(2)) for p in plain(x)]

    def losses(m):
        outputs = m(x)
        return {"box": sum(((o[:, :4] - t[:, :4]) ** 2).mean() for o, t in zip(outputs, targets)),
                "obj": sum(nn.functional.binary_cross_entropy_with_logits(o[:, 4:], (t[:, 4:] > 0.5).float())
                           for o, t in zip(outputs, targets))}

    learning = train_steps(model.train(), losses)
    assert learning == set(attention_parameters(model))
    assert [p.shape for p in model.eval()(x)] == [(2, 14, 8, 8), (2, 14, 4, 4)]
