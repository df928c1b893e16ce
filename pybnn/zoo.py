"""Published binary architectures built with pybnn layers (random weights until loaded).

Every function returns an unweighted pybnn.Model; `model.randomize(seed)` gives it weights
of the right shapes (speed does not depend on the values) and `model.load(path)` loads trained
ones.  Input size and class count are options so that tests can build small versions; the
defaults are the published sizes.  docs/zoo.md describes each architecture, its sources, its
parameter count and its measured speed.

    import pybnn.zoo
    model = pybnn.zoo.build("bireal18").randomize(0)
    model.summary()

Padding of binary convolutions follows the training framework of each model: PyTorch,
Theano and Torch pad the binarized input with zeros (pad_value=0); Larq's QuickNet pads with
+1 (pad_values=1.0, pad_value=1 here).
"""
from . import layers as L
from .errors import ConfigError
from .model import Model


def _bn(x, name, epsilon=1e-5):
    return L.BatchNormalization(epsilon=epsilon, name=name)(x)


# ---------------------------------------------------------------------------- BinaryNet


def binarynet_cifar10(input_shape=(32, 32, 3), classes=10, filters=(128, 256, 512), units=1024, pad_value=0):
    """BinaryNet for CIFAR-10 (Courbariaux, Hubara et al. 2016): 2x128C3-MP2-2x256C3-MP2-
    2x512C3-MP2-1024FC-1024FC-10FC, binary weights everywhere and binary activations
    everywhere but the float image entering the first layer; batch normalization after every
    layer, in the published order convolution -> max pooling -> BN -> sign.  The last layer's
    BN output is the score (the paper's L2-SVM output, no softmax)."""
    inp = L.Input(input_shape, name="image")
    x, n = inp, 0
    for width in filters:
        for j in range(2):
            n += 1
            if n == 1:  # float image x binary weights (the scale is a per-channel factor BN absorbs)
                x = L.FloatBinaryConv2D(width, 3, padding="same", use_bias=False, name="conv1")(x)
            else:
                x = L.Sign(name=f"conv{n}_sign")(x)
                x = L.BinaryConv2D(width, 3, padding="same", pad_value=pad_value, name=f"conv{n}")(x)
            if j == 1:
                x = L.MaxPool2D(2, name=f"pool{n}")(x)
            x = _bn(x, f"bn{n}", 1e-4)
    x = L.Sign(name="fc1_sign")(x)
    x = L.Flatten(name="flatten")(x)  # binary: no data moves, fc1 reads the packed pixel grid
    for i, width in enumerate((units, units, classes), 1):
        if i > 1:
            x = L.Sign(name=f"fc{i}_sign")(x)
        x = L.BinaryDense(width, name=f"fc{i}")(x)
        x = _bn(x, f"fc{i}_bn", 1e-4)
    return Model(inp, x, name="binarynet_cifar10")


# ---------------------------------------------------------------------------- AlexNet


def _alexnet_input(input_size, quantized):
    if quantized:  # image pixels straight into the int8 first layer (ImageNet mean/std-like scale)
        return L.Input((input_size, input_size, 3), "uint8", scale=1 / 58.0, zero_point=117, name="image")
    return L.Input((input_size, input_size, 3), name="image")


def _alexnet_first(inp, quantized):
    """conv1: 96 filters 11x11 / 4, padding 2 (float or int8), BN, ReLU, max pool 3 / 2."""
    if quantized:
        x = L.Int8Conv2D(96, 11, strides=4, padding=2, name="conv1")(inp)
    else:
        x = L.Conv2D(96, 11, strides=4, padding=2, name="conv1")(inp)
    x = L.ReLU(name="relu1")(_bn(x, "bn1"))
    return L.MaxPool2D(3, 2, name="pool1")(x)


def _alexnet_last(x, classes, quantized):
    """fc8: float Dense, or Quantize + Int8Dense (the ReLU before it makes x >= 0, so zero
    point -128 gives the whole int8 range to positive values), then softmax."""
    if quantized:
        x = L.Quantize(0.05, -128, name="fc8_quantize")(x)
        x = L.Int8Dense(classes, name="fc8")(x)
    else:
        x = L.Dense(classes, name="fc8")(x)
    return L.Softmax(name="softmax")(x)


# (filters, kernel, max pool after) of conv2..conv5
_ALEXNET_CONVS = ((256, 5, True), (384, 3, False), (384, 3, False), (256, 3, True))


def xnornet_alexnet(input_size=224, classes=1000, quantized=False, pad_value=0, units=4096):
    """XNOR-Net AlexNet (Rastegari et al. 2016) as the authors' Torch model
    (models/alexnetxnor.lua): conv1 11x11/4 + BN + ReLU + max pool 3/2, then binary layers
    BN -> sign -> binary convolution (weights scaled per output channel, alpha; a bias) with
    max pooling after conv2 and conv5, fc6 (a 6x6 convolution over the whole 6x6x256 grid)
    and fc7 binary too, then BN + ReLU + fc8.  conv1 and fc8 are real-valued (int8 with
    quantized=True).  The paper's input scaling factor K (a per-position mean of |x|) is left
    out, as in the authors' code (its binary activation is a plain sign).  Folding turns
    BN -> sign into thresholds and the convolutions feeding them into convolutions that
    write packed bits.  units: the width of fc6 and fc7."""
    inp = _alexnet_input(input_size, quantized)
    x = _alexnet_first(inp, quantized)
    for i, (filters, k, pool) in enumerate(_ALEXNET_CONVS, 2):
        x = L.Sign(name=f"conv{i}_sign")(_bn(x, f"conv{i}_bn"))
        x = L.BinaryConv2D(filters, k, padding=k // 2, pad_value=pad_value, use_scale=True, use_bias=True,
                           name=f"conv{i}")(x)
        if pool:
            x = L.MaxPool2D(3, 2, name=f"pool{i}")(x)
    x = L.Sign(name="fc6_sign")(_bn(x, "fc6_bn"))
    x = L.Flatten(name="flatten")(x)
    x = L.BinaryDense(units, use_scale=True, use_bias=True, name="fc6")(x)
    x = L.Sign(name="fc7_sign")(_bn(x, "fc7_bn"))
    x = L.BinaryDense(units, use_scale=True, use_bias=True, name="fc7")(x)
    x = L.ReLU(name="fc8_relu")(_bn(x, "fc8_bn"))
    name = "xnornet_alexnet" + ("_int8" if quantized else "")
    return Model(inp, _alexnet_last(x, classes, quantized), name=name)


def bwn_alexnet(input_size=224, classes=1000, quantized=False, units=4096):
    """Binary-Weight-Network AlexNet (Rastegari et al. 2016): the authors' AlexNet with batch
    normalization (models/alexnet.lua: convolution + BN + ReLU, max pooling after conv1, conv2
    and conv5) whose conv2..conv5, fc6 and fc7 have binary weights with a per-channel scale
    (FloatBinaryConv2D / FloatBinaryDense on float activations); conv1 and fc8 are
    real-valued (int8 with quantized=True).  units: the width of fc6 and fc7."""
    inp = _alexnet_input(input_size, quantized)
    x = _alexnet_first(inp, quantized)
    for i, (filters, k, pool) in enumerate(_ALEXNET_CONVS, 2):
        x = L.FloatBinaryConv2D(filters, k, padding=k // 2, name=f"conv{i}")(x)
        x = L.ReLU(name=f"relu{i}")(_bn(x, f"bn{i}"))
        if pool:
            x = L.MaxPool2D(3, 2, name=f"pool{i}")(x)
    x = L.Flatten(name="flatten")(x)
    for i in (6, 7):
        x = L.FloatBinaryDense(units, name=f"fc{i}")(x)
        x = L.ReLU(name=f"relu{i}")(_bn(x, f"bn{i}"))
    name = "bwn_alexnet" + ("_int8" if quantized else "")
    return Model(inp, _alexnet_last(x, classes, quantized), name=name)


# ---------------------------------------------------------------------------- Bi-Real Net


def _pelee_stem(inp, filters):
    """The stem block of PeleeNet (Wang et al. 2018), which the daBNN paper puts in place of
    ResNet's 7x7 convolution and max pooling: conv 3x3/2 (32) -> [conv 1x1 (16) -> conv
    3x3/2 (32)] beside [max pool 2/2], concatenated, then conv 1x1 to the `filters` channels
    of the first stage; BN and ReLU after every convolution.  Output: a quarter of the input
    size, as ResNet's stem."""
    def conv_bn_relu(x, f, k, strides, name):
        x = L.Conv2D(f, k, strides=strides, padding=k // 2, use_bias=False, name=name)(x)
        return L.ReLU(name=f"{name}_relu")(_bn(x, f"{name}_bn"))

    x = conv_bn_relu(inp, 32, 3, 2, "stem1")
    a = conv_bn_relu(x, 16, 1, 1, "stem2a")
    a = conv_bn_relu(a, 32, 3, 2, "stem2b")
    b = L.MaxPool2D(2, 2, name="stem2_pool")(x)
    x = L.Concatenate(name="stem2_concat")([a, b])
    return conv_bn_relu(x, filters, 1, 1, "stem3")


def birealnet18(input_size=224, classes=1000, stem=False, pad_value=0, blocks=(4, 4, 4, 4),
                filters=(64, 128, 256, 512)):
    """Bi-Real Net-18 (Liu et al. 2018), as its authors' PyTorch code: ResNet-18 in which
    every 3x3 convolution is a binary convolution of the sign of its input, followed by BN,
    with a real-valued shortcut around each single convolution (16 blocks of one
    convolution).  The first block of stages 2-4 halves the size with a stride-2 binary
    convolution; its shortcut is average pooling 2x2/2 + float 1x1 convolution + BN.  The
    first layer is a float 7x7/2 convolution + BN + max pooling 3x3/2 (PyTorch padding 3 and
    1), the head global average pooling + float Dense.  The binary weights' per-channel
    scale of training is a factor BN absorbs, so the convolutions carry none.

    stem=True replaces the 7x7 convolution and its max pooling by a cheaper float stem
    block (see _pelee_stem), the variant daBNN times as "Bi-Real Net 18 with stem"."""
    inp = L.Input((input_size, input_size, 3), name="image")
    if stem:
        x = _pelee_stem(inp, filters[0])
    else:
        x = L.Conv2D(filters[0], 7, strides=2, padding=3, use_bias=False, name="conv1")(inp)
        x = _bn(x, "bn1")
        x = L.MaxPool2D(3, 2, padding=1, name="pool1")(x)
    for s, (n, width) in enumerate(zip(blocks, filters), 1):
        for b in range(n):
            name = f"s{s}b{b}"
            down = s > 1 and b == 0
            y = L.Sign(name=f"{name}_sign")(x)
            y = L.BinaryConv2D(width, 3, strides=2 if down else 1, padding=1, pad_value=pad_value,
                               name=f"{name}_conv")(y)
            y = _bn(y, f"{name}_bn")
            shortcut = x
            if down:
                shortcut = L.AveragePool2D(2, 2, name=f"{name}_down_pool")(x)
                shortcut = L.Conv2D(width, 1, use_bias=False, name=f"{name}_down_conv")(shortcut)
                shortcut = _bn(shortcut, f"{name}_down_bn")
            x = L.Add(name=f"{name}_add")([y, shortcut])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(classes, name="fc")(x)
    return Model(inp, x, name="birealnet18" + ("_stem" if stem else ""))


# ---------------------------------------------------------------------------- QuickNet

QUICKNET_SIZES = {  # (blocks per section, filters per section), larq_zoo.sota.quicknet
    "small": ((4, 4, 4, 4), (32, 64, 256, 512)),
    "medium": ((4, 4, 4, 4), (64, 128, 256, 512)),
    "large": ((6, 8, 12, 6), (64, 128, 256, 512)),
}


def quicknet(size="medium", input_size=224, classes=1000):
    """QuickNet (Larq Zoo, larq_zoo/sota/quicknet.py, Bannink et al. 2021), small / medium
    (plain "QuickNet") / large.

    Stem: conv 3x3/2 (filters/4) + BN + ReLU, depthwise conv 3x3/2 + BN, conv 1x1 + BN.
    Residual block: binary conv 3x3 of sign(x) with one-padding (Larq pad_values=1.0) and
    ReLU, BN, added to x.  Transition block (where the filter count changes): ReLU, max pool
    2x2 stride 1 (valid), depthwise 3x3/2 "blur pool" conv (fixed blur weights in Larq;
    random here like every weight), conv 1x1 + BN.  Head: ReLU, global average pooling,
    Dense, softmax."""
    if size not in QUICKNET_SIZES:
        raise ConfigError(f"quicknet: size must be one of {sorted(QUICKNET_SIZES)}, got {size!r}")
    sections, widths = QUICKNET_SIZES[size]
    inp = L.Input((input_size, input_size, 3), name="image")
    f = widths[0]
    x = L.Conv2D(f // 4, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)
    x = L.ReLU(name="stem_relu")(_bn(x, "stem_bn", 1e-3))
    x = L.Conv2D(f // 4, 3, strides=2, padding="same", groups=f // 4, use_bias=False, name="stem_dwconv")(x)
    x = _bn(x, "stem_dwconv_bn", 1e-3)
    x = L.Conv2D(f, 1, use_bias=False, name="stem_pwconv")(x)
    x = _bn(x, "stem_pwconv_bn", 1e-3)
    channels = f
    for s, (n, width) in enumerate(zip(sections, widths), 1):
        for b in range(n):
            name = f"s{s}b{b}"
            if width != channels:
                x = L.ReLU(name=f"{name}_tr_relu")(x)
                x = L.MaxPool2D(2, strides=1, name=f"{name}_tr_pool")(x)
                x = L.Conv2D(channels, 3, strides=2, padding="same", groups=channels, use_bias=False,
                             name=f"{name}_tr_blur")(x)
                x = L.Conv2D(width, 1, use_bias=False, name=f"{name}_tr_conv")(x)
                x = _bn(x, f"{name}_tr_bn")
                channels = width
            y = L.Sign(name=f"{name}_sign")(x)
            y = L.BinaryConv2D(width, 3, padding="same", pad_value=1, activation="relu", name=f"{name}_conv")(y)
            y = _bn(y, f"{name}_bn")
            x = L.Add(name=f"{name}_add")([y, x])
    x = L.ReLU(name="head_relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(classes, name="fc")(x)
    x = L.Softmax(name="softmax")(x)
    return Model(inp, x, name="quicknet" + ("" if size == "medium" else f"_{size}"))


# ---------------------------------------------------------------------------- registry

MODELS = {  # name: (builder, its keyword arguments); the builders' defaults are the published sizes
    "binarynet": (binarynet_cifar10, {}),
    "xnornet": (xnornet_alexnet, {}),
    "xnornet_int8": (xnornet_alexnet, {"quantized": True}),
    "bwn": (bwn_alexnet, {}),
    "bwn_int8": (bwn_alexnet, {"quantized": True}),
    "bireal18": (birealnet18, {}),
    "bireal18_stem": (birealnet18, {"stem": True}),
    "quicknet_small": (quicknet, {"size": "small"}),
    "quicknet": (quicknet, {"size": "medium"}),
    "quicknet_large": (quicknet, {"size": "large"}),
}


def build(name, input_size=None, classes=None, **options):
    """The zoo model `name` (one of MODELS) at its published size, or at another input size
    (square images) and class count; other options go to its builder."""
    if name not in MODELS:
        raise ConfigError(f"pybnn.zoo: unknown model {name!r}; known: {', '.join(MODELS)}")
    builder, kwargs = MODELS[name]
    kwargs = dict(kwargs, **options)
    if input_size is not None:
        if builder is binarynet_cifar10:
            kwargs["input_shape"] = (input_size, input_size, 3)
        else:
            kwargs["input_size"] = input_size
    if classes is not None:
        kwargs["classes"] = classes
    return builder(**kwargs)
