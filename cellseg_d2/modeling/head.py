"""YOLACT prediction head shared over the FPN levels: class logits (with background), box
deltas and tanh mask coefficients per anchor."""
import math

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from torch import nn


class YolactHead(nn.Module):
    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_prototypes: int,
                 num_convs: int = 1, norm: str = "", prior_prob: float = 0.01):
        super().__init__()
        self.tower = nn.Sequential(*[
            Conv2d(in_channels, in_channels, 3, padding=1, bias=not norm,
                   norm=get_norm(norm, in_channels), activation=F.relu)
            for _ in range(num_convs)])
        self.cls = nn.Conv2d(in_channels, num_anchors * (num_classes + 1), 3, padding=1)
        self.box = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.coef = nn.Conv2d(in_channels, num_anchors * num_prototypes, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Start with background dominant (softmax prior), as RetinaNet does for sigmoid: the
        # early loss is not swamped by thousands of easy negatives.
        bias = self.cls.bias.view(num_anchors, num_classes + 1)
        with torch.no_grad():
            bias[:, num_classes] = math.log((1 - prior_prob) / prior_prob * num_classes)
        self.num_classes = num_classes

    def forward(self, features):
        logits, deltas, coefs = [], [], []
        for x in features:
            t = self.tower(x)
            logits.append(self.cls(t))
            deltas.append(self.box(t))
            coefs.append(torch.tanh(self.coef(t)))
        return logits, deltas, coefs
