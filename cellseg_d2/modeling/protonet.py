"""Prototype network on P3 and the semantic-segmentation auxiliary head."""
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from torch import nn


class ProtoNet(nn.Module):
    """3 x (3x3 conv + ReLU), x2 bilinear upsample, 3x3 conv + ReLU, 1x1 conv to k, ReLU.
    Output stride is half the input feature's (4 on P3)."""

    def __init__(self, in_channels: int, channels: int = 256, num_prototypes: int = 32, norm: str = "",
                 activation: str = "relu"):
        super().__init__()
        if activation not in ("relu", "none"):
            raise ValueError(f"MODEL.YOLACT.PROTO_ACTIVATION must be 'relu' or 'none', got {activation!r}")
        self.activation = activation
        self.pre = nn.ModuleList()
        for i in range(3):
            self.pre.append(Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1,
                                   bias=not norm, norm=get_norm(norm, channels), activation=F.relu))
        self.post = Conv2d(channels, channels, 3, padding=1, bias=not norm,
                           norm=get_norm(norm, channels), activation=F.relu)
        self.out = Conv2d(channels, num_prototypes, 1)
        for m in [*self.pre, self.post, self.out]:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x):
        for conv in self.pre:
            x = conv(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.out(self.post(x))
        return F.relu(x) if self.activation == "relu" else x
