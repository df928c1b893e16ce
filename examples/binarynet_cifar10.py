#!/usr/bin/env python3
"""BinaryNet for CIFAR-10 (Courbariaux et al., 2016) built with pybnn.torch, exported and run by pybnn.

    python examples/binarynet_cifar10.py                        # random weights: export, summary, speed
    python examples/binarynet_cifar10.py --cifar-dir DIR --epochs 200 --out binarynet.bin   # train first

The architecture is binarynet-tensorflow's flagship example, 128C3-128C3-MP2-256C3-256C3-MP2-
512C3-512C3-MP2-1024FC-1024FC-10FC: 3x3 convolutions with 'same' padding, 2x2 max pooling, every weight
binary, every layer followed by BatchNorm and (but the last) a sign.  Only the first layer's
input is float (the image; FloatBinaryConv2d: float input x binary weights); every other layer
takes binary input (BinaryConv2d / BinaryLinear, padding with 0 as the paper's Torch code does).

The pooling comes after the sign (on packed bits, where it is an AND) instead of between the
convolution and the BatchNorm as in the paper; the two orders compute the same whenever the
BatchNorm's scale is positive (sign(BN(.)) is then non-decreasing, and max commutes with it),
and this one lets pybnn fold every BatchNorm + sign into integer thresholds of the convolution
before it, so binary layers pass packed bits to each other.

Training on CIFAR-10 is not possible where this was written (no data set); speed does not depend
on the weights, so without --cifar-dir the model gets random weights (and BatchNorm statistics
from a few random batches, so that signs split evenly).  The script then prints pybnn's summary,
the file size, milliseconds per image in pybnn and in PyTorch, and how often the two agree.

To train it where CIFAR-10 is: download the "CIFAR-10 binary version" (cifar-10-binary.tar.gz
from https://www.cs.toronto.edu/~kriz/cifar.html; plain bytes, no pickle), unpack it and pass
the cifar-10-batches-bin directory as --cifar-dir.  The script trains with Adam (learning rate
1e-3 decaying to 1e-6, cross-entropy, random crops and flips; latent weights clipped to [-1, 1]),
reports the test accuracy after every epoch and exports the trained model.  The paper reports
88.6% test accuracy after 500 epochs with its squared hinge loss and ZCA-whitened input;
expect several hours per 100 epochs on a GPU and far longer on a CPU (use --device cuda).
"""
import argparse
import os
import sys
import tempfile
import time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pybnn import torch as bt

BN_EPS = 1e-4


def build_model():
    """BinaryNet's CIFAR-10 network as an nn.Sequential of pybnn.torch modules."""
    layers, cin = [], 3
    for i, (cout, pool) in enumerate([(128, False), (128, True), (256, False), (256, True), (512, False),
                                      (512, True)], 1):
        conv = (bt.FloatBinaryConv2d(cin, cout, 3, padding="same", bias=False) if i == 1
                else bt.BinaryConv2d(cin, cout, 3, padding="same", pad_value=0))
        layers += [(f"conv{i}", conv), (f"bn{i}", bt.BatchNorm2d(cout, eps=BN_EPS)), (f"sign{i}", bt.BinaryActivation())]
        if pool:
            layers.append((f"pool{i}", nn.MaxPool2d(2)))
        cin = cout
    layers.append(("flatten", nn.Flatten()))
    for i, (fin, fout) in enumerate([(512 * 4 * 4, 1024), (1024, 1024), (1024, 10)], 7):
        layers += [(f"fc{i}", bt.BinaryLinear(fin, fout)), (f"bn{i}", bt.BatchNorm1d(fout, eps=BN_EPS))]
        if fout != 10:
            layers.append((f"sign{i}", bt.BinaryActivation()))
    layers.append(("softmax", nn.Softmax(dim=1)))
    return nn.Sequential(OrderedDict(layers))


def random_weights(model, seed=0, batches=4, batch_size=16):
    """Random latent weights, then BatchNorm statistics from a few batches of random images."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (bt.BinaryConv2d, bt.FloatBinaryConv2d)):
            nn.init.uniform_(m.weight, -1, 1)
    bt.recompute_batch_norm(model, torch.rand(batches * batch_size, 3, 32, 32) * 2 - 1, batch_size)
    return model.eval()


# ---------------------------------------------------------------------------- training

def read_cifar(folder, names):
    """Images (N, 3, 32, 32) scaled to [-1, 1] and labels from CIFAR-10's binary batches (each
    record: one label byte, then 3072 pixel bytes, the red, green and blue 32x32 planes)."""
    records = np.concatenate([np.fromfile(os.path.join(folder, n), np.uint8).reshape(-1, 3073) for n in names])
    images = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 127.5 - 1
    return torch.from_numpy(images), torch.from_numpy(records[:, 0].astype(np.int64))


def augment(x, generator):
    """Random crops of the image padded by 4 pixels (with 0, the mean grey), random flips."""
    n = len(x)
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = (torch.randint(0, 9, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(32))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(32))[:, None, None, :]
    crops = padded[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    crops[flip] = crops[flip].flip(3)
    return crops


def train(model, folder, epochs, batch_size=100, device="cpu", seed=0):
    x_train, y_train = read_cifar(folder, [f"data_batch_{i}.bin" for i in range(1, 6)])
    x_test, y_test = read_cifar(folder, ["test_batch.bin"])
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    logits = model[:-1]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=(1e-3) ** (1 / max(epochs - 1, 1)))
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            loss = F.cross_entropy(logits(augment(x_train[batch], generator).to(device)), y_train[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bt.clip_latent_weights(model)
        schedule.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x_test[i:i + 500].to(device)).argmax(1).cpu() == y_test[i:i + 500]).sum())
                          for i in range(0, len(x_test), 500))
        print(f"epoch {epoch:3d}  loss {loss.item():.3f}  test accuracy {correct / len(x_test):.2%}  "
              f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    return model.cpu().eval()


# ---------------------------------------------------------------------------- export and speed

def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar-dir", help="the cifar-10-batches-bin directory: train before exporting")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--device", default="cpu", help="PyTorch device for training")
    parser.add_argument("--out", help="model file to write (default: a temporary file)")
    parser.add_argument("--batch", type=int, default=16, help="images per batch for the batched timing")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    model = build_model()
    model = train(model, args.cifar_dir, args.epochs, device=args.device) if args.cifar_dir else random_weights(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.out or os.path.join(tmp, "binarynet_cifar10.bin")
        pybnn_model = bt.export(model, path, torch.zeros(1, 3, 32, 32), name="binarynet_cifar10", print_summary=True)
        print(f"\nmodel file: {os.path.getsize(path):,} bytes ({path if args.out else 'temporary'})")

        images = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
        x = bt.nhwc(images)
        pybnn_probs = pybnn_model.predict(x)
        with torch.no_grad():
            torch_probs = model(images).numpy()
        agree = int((pybnn_probs.argmax(1) == torch_probs.argmax(1)).sum())
        print(f"pybnn and PyTorch predict the same class for {agree}/{len(x)} random images")

        one = median_ms(lambda: pybnn_model.predict(x[:1]), args.repeats)
        batch = median_ms(lambda: pybnn_model.predict(x), args.repeats) / len(x)
        with torch.no_grad():
            torch_one = median_ms(lambda: model(images[:1]), args.repeats)
            torch_batch = median_ms(lambda: model(images), args.repeats) / len(x)
        print(f"pybnn:   {one:.2f} ms for one image, {batch:.2f} ms/image in a batch of {len(x)}")
        print(f"PyTorch: {torch_one:.2f} ms for one image, {torch_batch:.2f} ms/image in a batch of {len(x)} "
              f"(float32 emulation of the binary layers, {torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
