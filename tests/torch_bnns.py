"""Binary networks written in plain PyTorch the way well-known public BNN code writes them
(small sizes, odd channel counts), for the ONNX import tests.

* XNOR-Net (the XNOR-Net-PyTorch layout): BatchNorm -> sign (a custom autograd Function) ->
  convolution -> ReLU, weights binarized in place to sign(W) * mean|W| per output channel
  before export, a binary fully connected layer on a flattened (C, H, W) tensor.
* Bi-Real Net: the approx-sign activation (piecewise polynomial straight-through estimator),
  HardBinaryConv computing sign(W) * mean|W| inside forward(), real-valued shortcuts with an
  average-pooling + 1x1 convolution downsample.
* ReActNet (MobileNet-style blocks): LearnableBias (RSign's threshold, RPReLU's shifts),
  PReLU, the same binary activation and convolution, a downsampling block that duplicates
  its pointwise convolution and concatenates.
* Other straight-through forms: x + (sign(x) - x).detach(), torch.where(x >= 0, 1, -1),
  Hardtanh before sign.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------- XNOR-Net


class BinActive(torch.autograd.Function):
    """Binarize the input activations (sign); the gradient passes where |x| < 1."""

    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        return input.sign()

    @staticmethod
    def backward(ctx, grad_output):
        input, = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input[input.ge(1)] = 0
        grad_input[input.le(-1)] = 0
        return grad_input


class BinConv2d(nn.Module):
    def __init__(self, input_channels, output_channels, kernel_size=-1, stride=-1, padding=-1, dropout=0,
                 Linear=False, previous_conv=False, size=0):
        super().__init__()
        self.layer_type = "BinConv2d"
        self.dropout_ratio = dropout
        self.Linear, self.previous_conv, self.size = Linear, previous_conv, size
        if dropout != 0:
            self.dropout = nn.Dropout(dropout)
        if not self.Linear:
            self.bn = nn.BatchNorm2d(input_channels, eps=1e-4, momentum=0.1, affine=True)
            self.conv = nn.Conv2d(input_channels, output_channels, kernel_size=kernel_size, stride=stride,
                                  padding=padding)
        else:
            if self.previous_conv:
                self.bn = nn.BatchNorm2d(int(input_channels / size), eps=1e-4, momentum=0.1, affine=True)
            else:
                self.bn = nn.BatchNorm1d(input_channels, eps=1e-4, momentum=0.1, affine=True)
            self.linear = nn.Linear(input_channels, output_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.bn(x)
        x = BinActive.apply(x)
        if self.dropout_ratio != 0:
            x = self.dropout(x)
        if not self.Linear:
            x = self.conv(x)
        else:
            if self.previous_conv:
                x = x.view(x.size(0), self.linear.in_features)
            x = self.linear(x)
        x = self.relu(x)
        return x


class XNORNet(nn.Module):
    """A small XNOR-Net: float first and last layers, binary layers between."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 40, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(40, eps=1e-4, momentum=0.1, affine=False),
            nn.ReLU(inplace=True),
            BinConv2d(40, 48, kernel_size=3, stride=1, padding=1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            BinConv2d(48, 33, kernel_size=1, stride=1, padding=0, dropout=0.1),
            BinConv2d(33, 70, kernel_size=3, stride=2, padding=1),
        )
        self.classifier = nn.Sequential(
            BinConv2d(70 * 3 * 3, 64, Linear=True, previous_conv=True, size=3 * 3),
            nn.BatchNorm1d(64, eps=1e-3, momentum=0.1, affine=True),
            nn.Linear(64, classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))

    def binarize_weights(self):
        """What XNOR-Net's BinOp.binarization() does before each forward pass: replace the
        weights of binary layers by sign(W) * mean|W| (mean per output channel)."""
        for m in self.modules():
            if isinstance(m, BinConv2d):
                layer = m.linear if m.Linear else m.conv
                w = layer.weight.data
                n = w[0].nelement()
                dims = tuple(range(1, w.dim()))
                alpha = w.norm(1, dim=dims, keepdim=True).div(n)
                layer.weight.data = w.sign().mul(alpha)


# ---------------------------------------------------------------------------- Bi-Real Net


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BinaryActivation(nn.Module):
    """Bi-Real's ApproxSign: sign(x) forward, a piecewise polynomial's gradient backward."""

    def forward(self, x):
        out_forward = torch.sign(x)
        mask1 = x < -1
        mask2 = x < 0
        mask3 = x < 1
        out1 = (-1) * mask1.type(torch.float32) + (x * x + 2 * x) * (1 - mask1.type(torch.float32))
        out2 = out1 * mask2.type(torch.float32) + (-x * x + 2 * x) * (1 - mask2.type(torch.float32))
        out3 = out2 * mask3.type(torch.float32) + 1 * (1 - mask3.type(torch.float32))
        out = out_forward.detach() - out3.detach() + out3
        return out


class HardBinaryConv(nn.Module):
    def __init__(self, in_chn, out_chn, kernel_size=3, stride=1, padding=1):
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.number_of_weights = in_chn * out_chn * kernel_size * kernel_size
        self.shape = (out_chn, in_chn, kernel_size, kernel_size)
        self.weights = nn.Parameter(torch.rand((self.number_of_weights, 1)) * 0.001, requires_grad=True)

    def forward(self, x):
        real_weights = self.weights.view(self.shape)
        scaling_factor = torch.mean(torch.mean(torch.mean(abs(real_weights), dim=3, keepdim=True), dim=2,
                                               keepdim=True), dim=1, keepdim=True)
        scaling_factor = scaling_factor.detach()
        binary_weights_no_grad = scaling_factor * torch.sign(real_weights)
        cliped_weights = torch.clamp(real_weights, -1.0, 1.0)
        binary_weights = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
        y = F.conv2d(x, binary_weights, stride=self.stride, padding=self.padding)
        return y


class BiRealBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.binary_activation = BinaryActivation()
        self.binary_conv = HardBinaryConv(inplanes, planes, stride=stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.binary_activation(x)
        out = self.binary_conv(out)
        out = self.bn1(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return out


class BiRealNet(nn.Module):
    def __init__(self, classes=10, width=24):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        down = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2), conv1x1(width, 2 * width),
                             nn.BatchNorm2d(2 * width))
        self.layer1 = nn.Sequential(BiRealBlock(width, width), BiRealBlock(width, width))
        self.layer2 = nn.Sequential(BiRealBlock(width, 2 * width, stride=2, downsample=down),
                                    BiRealBlock(2 * width, 2 * width))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        x = self.layer2(self.layer1(x))
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


# ---------------------------------------------------------------------------- ReActNet


class LearnableBias(nn.Module):
    def __init__(self, out_chn):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, out_chn, 1, 1), requires_grad=True)

    def forward(self, x):
        out = x + self.bias.expand_as(x)
        return out


class ReActBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        norm_layer = nn.BatchNorm2d
        self.move11 = LearnableBias(inplanes)
        self.binary_3x3 = HardBinaryConv(inplanes, inplanes, stride=stride)
        self.bn1 = norm_layer(inplanes)
        self.move12 = LearnableBias(inplanes)
        self.prelu1 = nn.PReLU(inplanes)
        self.move13 = LearnableBias(inplanes)
        self.move21 = LearnableBias(inplanes)
        if inplanes == planes:
            self.binary_pw = HardBinaryConv(inplanes, planes, kernel_size=1, padding=0)
            self.bn2 = norm_layer(planes)
        else:
            self.binary_pw_down1 = HardBinaryConv(inplanes, inplanes, kernel_size=1, padding=0)
            self.binary_pw_down2 = HardBinaryConv(inplanes, inplanes, kernel_size=1, padding=0)
            self.bn2_1 = norm_layer(inplanes)
            self.bn2_2 = norm_layer(inplanes)
        self.move22 = LearnableBias(planes)
        self.prelu2 = nn.PReLU(planes)
        self.move23 = LearnableBias(planes)
        self.binary_activation = BinaryActivation()
        self.stride = stride
        self.inplanes = inplanes
        self.planes = planes
        if self.inplanes != self.planes:
            self.pooling = nn.AvgPool2d(2, 2)

    def forward(self, x):
        out1 = self.move11(x)
        out1 = self.binary_activation(out1)
        out1 = self.binary_3x3(out1)
        out1 = self.bn1(out1)
        if self.stride == 2:
            x = self.pooling(x)
        out1 = x + out1
        out1 = self.move12(out1)
        out1 = self.prelu1(out1)
        out1 = self.move13(out1)
        out2 = self.move21(out1)
        out2 = self.binary_activation(out2)
        if self.inplanes == self.planes:
            out2 = self.binary_pw(out2)
            out2 = self.bn2(out2)
            out2 += out1
        else:
            assert self.planes == self.inplanes * 2
            out2_1 = self.binary_pw_down1(out2)
            out2_2 = self.binary_pw_down2(out2)
            out2_1 = self.bn2_1(out2_1)
            out2_2 = self.bn2_2(out2_2)
            out2_1 += out1
            out2_2 += out1
            out2 = torch.cat([out2_1, out2_2], dim=1)
        out2 = self.move22(out2)
        out2 = self.prelu2(out2)
        out2 = self.move23(out2)
        return out2


class ReActNet(nn.Module):
    def __init__(self, classes=10, width=20):
        super().__init__()
        self.feature = nn.ModuleList([
            nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width)),
            ReActBlock(width, width),
            ReActBlock(width, 2 * width, stride=2),
            ReActBlock(2 * width, 2 * width),
        ])
        self.pool1 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        for block in self.feature:
            x = block(x)
        x = self.pool1(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


# ---------------------------------------------------------------------------- other STE forms


class SignSTE(nn.Module):
    """sign(x) in the forward pass, in one of the ways public code writes it."""

    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, x):
        if self.how == "sign":
            return torch.sign(x)
        if self.how == "detach":                     # straight-through: identity gradient
            return x + (torch.sign(x) - x).detach()
        if self.how == "where":                      # sign with sign(0) = +1, as larq computes it
            return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
        if self.how == "where_gt":                   # +1 only above 0
            return torch.where(x > 0, 1.0, -1.0)
        if self.how == "where_lt":                   # written the other way round
            return torch.where(x < 0, -1.0, 1.0)
        if self.how == "hardtanh":                   # BinaryNet: Hardtanh, then sign
            return torch.sign(F.hardtanh(x))
        if self.how == "rsign":                      # ReActNet's RSign: a learnable threshold per channel
            return torch.sign(x - 0.25 * torch.arange(x.shape[1], dtype=x.dtype).view(1, -1, 1, 1) / x.shape[1])
        raise ValueError(self.how)


class STENet(nn.Module):
    """Float stem, two binary convolutions (one strided, one with groups) and a binary dense
    layer on a flattened binary tensor, each input binarized by `how`."""

    def __init__(self, how, classes=7):
        super().__init__()
        self.stem = nn.Conv2d(3, 36, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(36)
        self.act1 = SignSTE(how)
        self.conv1 = nn.Conv2d(36, 40, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(40)
        self.act2 = SignSTE(how)
        self.conv2 = nn.Conv2d(40, 40, 3, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(40)
        self.act3 = SignSTE(how)
        self.fc = nn.Linear(40 * 4 * 4, classes, bias=False)
        self.bn3 = nn.BatchNorm1d(classes)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        x = self.bn1(self.conv1(self.act1(x)))
        x = self.bn2(self.conv2(self.act2(x)))
        x = torch.flatten(self.act3(x), 1)
        return self.bn3(self.fc(x))

    def binarize_weights(self):
        """BinaryNet-style: keep only the signs of the binary layers' weights."""
        for layer in (self.conv1, self.conv2, self.fc):
            layer.weight.data = torch.where(layer.weight.data >= 0, 1.0, -1.0)


# ---------------------------------------------------------------------------- helpers


def randomize(net, seed=0):
    """Random BatchNorm statistics and affine parameters, PReLU slopes and learnable biases, so
    that none of them is an identity; returns the net in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.randn(m.num_features, generator=g))
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, LearnableBias):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
            elif isinstance(m, HardBinaryConv):
                m.weights.copy_(torch.randn(m.weights.shape, generator=g) * 0.01)
    return net.eval()
