#!/usr/bin/env python3
"""Train the digits binary network with pybnn.torch and export it to a pybnn model file.

    pip install ".[torch]" scikit-learn
    python examples/digits/train_digits.py            # -> examples/digits/digits.bin
    python examples/digits/train_digits.py --int8     # int8 first and last layers -> digits_int8.bin

Data: scikit-learn's handwritten digits (digits_data.py: 1347 training images, shifted at
random by up to one pixel, and 450 held-out test images).  80 epochs take about 35 s on one
thread (one to two minutes on a busy machine).  The script prints the test
accuracy of the PyTorch model and of the exported pybnn model and how often their predictions
agree: 98.4% for digits.bin and 98.7% for digits_int8.bin, 450/450 agreeing.  (Seeds 0-4 give
98.2-99.1% for digits.bin: one test image is 0.22 points.)

The network, in pybnn.torch modules (the exported pybnn layers carry the same names):

    conv1   float 3x3 convolution, 32 filters (--int8: Int8Conv2d, its input calibrated on the
            training images), bn1, sign1: pybnn folds bn1 + sign1 into thresholds
    bconv2  binary 3x3 convolution, 64 filters, 'same' padding with 0, bn2, sign2: folded into
            integer thresholds, so bconv2 writes packed bits; pool2 2x2 max pooling on the bits
    bconv3  the same with 128 filters, bn3, sign3, pool3
    flatten, dense4 binary dense layer with 10 outputs (--int8: Int8Linear, so that the first
            and last layers are int8, as in binarynet-tensorflow's 8-bit first/last XNOR-Net),
            bn4 (folded into dense4's multiplier and bias), softmax
"""
import argparse
import os
import sys
import time
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from digits_data import load_split, to_input  # noqa: E402

from pybnn import torch as bt  # noqa: E402

BN_EPS = 1e-5
LATENT_INIT = 0.01


def build_model(int8=False):
    """The network as an nn.Sequential of pybnn.torch modules (eval mode computes what pybnn does)."""
    first = (bt.Int8Conv2d(1, 32, 3, padding="same", bias=False) if int8
             else nn.Conv2d(1, 32, 3, padding="same", bias=False))
    last = bt.Int8Linear(2 * 2 * 128, 10, bias=False) if int8 else bt.BinaryLinear(2 * 2 * 128, 10)
    model = nn.Sequential(OrderedDict([
        ("conv1", first), ("bn1", bt.BatchNorm2d(32, eps=BN_EPS)), ("sign1", bt.BinaryActivation()),
        ("bconv2", bt.BinaryConv2d(32, 64, 3, padding="same", pad_value=0)),
        ("bn2", bt.BatchNorm2d(64, eps=BN_EPS)), ("sign2", bt.BinaryActivation()), ("pool2", nn.MaxPool2d(2)),
        ("bconv3", bt.BinaryConv2d(64, 128, 3, padding="same", pad_value=0)),
        ("bn3", bt.BatchNorm2d(128, eps=BN_EPS)), ("sign3", bt.BinaryActivation()), ("pool3", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("dense4", last),
        ("bn4", bt.BatchNorm1d(10, eps=BN_EPS)), ("softmax", nn.Softmax(dim=1)),
    ]))
    # Small latent binary weights, so that Adam's first steps already flip signs.
    for binary in (model.bconv2, model.bconv3) + (() if int8 else (model.dense4,)):
        nn.init.uniform_(binary.weight, -LATENT_INIT, LATENT_INIT)
    return model


def nchw(pixels):
    """uint8 pixels (N, 8, 8) -> the torch input (N, 1, 8, 8) = pixel / 255."""
    return torch.from_numpy(to_input(pixels)).permute(0, 3, 1, 2).contiguous()


def random_shift(x, generator, max_shift=1):
    """Shift each image by a random whole number of pixels in [-max_shift, max_shift] per axis,
    filling with background (0)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[:, 0][torch.arange(n)[:, None, None], rows, cols][:, None]


def predict(model, x, batch=1024):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


def train(model, x, y, epochs=80, lr=1e-2, batch_size=64, shift=1, seed=0, log=print):
    """Adam with a one-cycle schedule on the logits (the model without its softmax); latent
    binary weights clipped to [-1, 1] after every step (BinaryNet); BatchNorm statistics
    recomputed at the end.  Deterministic for a seed and a number of threads."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    logits = model[:-1]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = (len(x) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps,
                                                   pct_start=0.15)
    y = torch.as_tensor(y)
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for i in range(0, len(x), batch_size):
            batch = order[i:i + batch_size]
            xb = random_shift(x[batch], generator, shift) if shift else x[batch]
            loss = F.cross_entropy(logits(xb), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bt.clip_latent_weights(model)
            total += loss.item() * len(batch)
        if log and (epoch == 1 or epoch % 10 == 0 or epoch == epochs):
            log(f"epoch {epoch:3d}  loss {total / len(x):.4f}  [{time.perf_counter() - t0:.0f} s]")
    bt.recompute_batch_norm(model, x)  # the statistics of the final weights, on the unshifted images
    return model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8", action="store_true", help="int8 first and last layers (the first calibrated on the training images)")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (batches of 64 8x8 images "
                        "train fastest on one)")
    parser.add_argument("--out", default=None, help="model file (default: digits.bin or digits_int8.bin here)")
    args = parser.parse_args(argv)
    out = args.out or os.path.join(HERE, "digits_int8.bin" if args.int8 else "digits.bin")

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    train_pixels, train_labels, test_pixels, test_labels, _ = load_split()
    x_train, x_test = nchw(train_pixels), nchw(test_pixels)

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)  # the initial weights
    model = train(build_model(args.int8), x_train, train_labels, args.epochs, args.lr, seed=args.seed)
    print(f"trained in {time.perf_counter() - t0:.0f} s")

    pybnn_model = bt.export(model, out, x_train[:1], calibration_data=x_train if args.int8 else None,
                            name="digits_int8" if args.int8 else "digits", print_summary=True)
    torch_pred = predict(model, x_test).argmax(1)
    pybnn_pred = pybnn_model.predict(to_input(test_pixels)).argmax(1)
    n = len(test_labels)
    print(f"wrote {out} ({os.path.getsize(out):,} bytes)")
    print(f"test accuracy: PyTorch {(torch_pred == test_labels).mean():.1%}, "
          f"pybnn {(pybnn_pred == test_labels).mean():.1%} ({(pybnn_pred == test_labels).sum()}/{n}); "
          f"predictions agree on {(torch_pred == pybnn_pred).sum()}/{n}")


if __name__ == "__main__":
    main()
