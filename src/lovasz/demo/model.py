"""A compact U-Net: two down-sampling levels, enough to segment the synthetic scenes.

``dims=3`` builds the same network of 3-D layers (the benchmark's volumes).
"""

import torch
from torch import nn

_LAYERS = {
    2: (nn.Conv2d, nn.BatchNorm2d, nn.ConvTranspose2d, nn.MaxPool2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.ConvTranspose3d, nn.MaxPool3d),
}


def _block(cin: int, cout: int, dims: int = 2) -> nn.Sequential:
    conv, norm = _LAYERS[dims][:2]
    return nn.Sequential(
        conv(cin, cout, 3, padding=1),
        norm(cout),
        nn.ReLU(inplace=True),
        conv(cout, cout, 3, padding=1),
        norm(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 4, width: int = 16, dims: int = 2):
        super().__init__()
        if dims not in _LAYERS:
            raise ValueError(f"dims must be 2 or 3; got {dims!r}")
        conv, _, up, pool = _LAYERS[dims]
        self.enc1, self.enc2 = _block(in_channels, width, dims), _block(width, 2 * width, dims)
        self.bottom = _block(2 * width, 4 * width, dims)
        self.up2, self.dec2 = up(4 * width, 2 * width, 2, stride=2), _block(4 * width, 2 * width, dims)
        self.up1, self.dec1 = up(2 * width, width, 2, stride=2), _block(2 * width, width, dims)
        self.head = conv(width, num_classes, 1)
        self.pool = pool(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)
