#!/usr/bin/env python3
"""Train a small binary neural network (BNN) on scikit-learn's bundled digits.

The data set is ``sklearn.datasets.load_digits`` (1797 8x8 images, values
0..16, shipped with scikit-learn, no download).  Training runs on the CPU in
well under a minute.  The torch forward pass in eval mode reproduces pybnn's
inference semantics exactly:

* input: 8x8x1 float32, ``x = png_pixel / 255`` where
  ``png_pixel = min(value * 16, 255)`` (uint8), i.e. exactly what a user gets
  from loading one of the shipped sample PNGs and dividing by 255;
* sign(x) = +1 for x >= 0, -1 for x < 0 (sign(0) = +1);
* binary convolutions use 'same' padding with pad value 0 applied to the
  already binarized (+-1) input, i.e. ``F.conv2d(sign(x), sign(w), padding=1)``;
* BatchNorm (eval): ``(x - mean) / sqrt(var + eps) * gamma + beta``, eps=1e-5;
* the flatten before the dense layer is in (H, W, C) order (pybnn is NHWC).

Architecture (pybnn layer names)::

    conv1  float Conv2D 32 3x3 same, no bias -> bn1 -> sign1
    bconv2 binary Conv2D 64 3x3 same (pad 0)  -> bn2 -> sign2 -> pool2 (2x2)
    bconv3 binary Conv2D 128 3x3 same (pad 0) -> bn3 -> sign3 -> pool3 (2x2)
    flatten (HWC) -> dense4 binary Dense 10, no bias -> bn4 -> softmax

Outputs (see ``--help``):

* ``--out`` (default /tmp/digits_weights.npz): weights in pybnn's Keras
  conventions (conv kernels (kh, kw, cin, cout), dense kernel (in, out) with
  rows in (h, w, c) order, binary kernels stored as +-1 float32, BN
  gamma/beta/mean/var float32);
* ``--eval-out`` (default /tmp/digits_torch_eval.npz): test images (uint8
  Nx8x8), labels, and the float32 bn4 outputs (logits) of the torch eval model;
* ``--samples-dir`` (default: ``samples/`` next to this script): 100 test
  images as 8-bit grayscale PNGs (first 10 of each class) plus labels.csv;
* ``--pybnn-out PATH`` (optional): also build the pybnn model and save it.

Reproduce::

    python examples/digits/train_digits.py
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
BN_EPS = 1e-5
LATENT_INIT = 0.01  # latent binary weights ~ U(-a, a)


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def digits_to_uint8(images: np.ndarray) -> np.ndarray:
    """digits values 0..16 -> uint8 PNG pixels min(value * 16, 255)."""
    return np.minimum(np.asarray(images, dtype=np.int64) * 16, 255).astype(np.uint8)


def pixels_to_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, 8, 8) -> float32 network input (N, 8, 8, 1) = pixel / 255."""
    return (pixels.astype(np.float32) / np.float32(255))[..., None]


def load_split(seed_split: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    pixels = digits_to_uint8(d.images)  # (1797, 8, 8) uint8
    labels = d.target.astype(np.int64)
    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=0.25, random_state=seed_split,
                              stratify=labels)
    return pixels[tr], labels[tr], pixels[te], labels[te], te


# --------------------------------------------------------------------------
# binarization
# --------------------------------------------------------------------------
def sign01(x: torch.Tensor) -> torch.Tensor:
    """pybnn sign: +1 where x >= 0, -1 where x < 0 (sign(0) = +1)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _SignSTE(torch.autograd.Function):
    """Forward: sign01.  Backward: straight-through, gated by |x| <= 1
    (the BinaryNet hard-tanh STE)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign01(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    return _SignSTE.apply(x)


class BinaryConv2d(nn.Conv2d):
    """Binary conv: sign(input) * sign(latent weight), zero 'same' padding
    applied to the binarized input.  The input is expected to be +-1 already
    (it comes from a sign layer); the sign here is then a no-op."""

    def __init__(self, cin, cout):
        super().__init__(cin, cout, 3, padding=1, bias=False)
        nn.init.uniform_(self.weight, -LATENT_INIT, LATENT_INIT)

    def forward(self, x):
        return F.conv2d(sign_ste(x), sign_ste(self.weight), padding=1)


class BinaryLinear(nn.Linear):
    def __init__(self, fin, fout):
        super().__init__(fin, fout, bias=False)
        nn.init.uniform_(self.weight, -LATENT_INIT, LATENT_INIT)

    def forward(self, x):
        return F.linear(sign_ste(x), sign_ste(self.weight))


class DigitsBNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32, eps=BN_EPS)
        self.bconv2 = BinaryConv2d(32, 64)
        self.bn2 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.bconv3 = BinaryConv2d(64, 128)
        self.bn3 = nn.BatchNorm2d(128, eps=BN_EPS)
        self.dense4 = BinaryLinear(2 * 2 * 128, 10)
        self.bn4 = nn.BatchNorm1d(10, eps=BN_EPS)

    def binary_modules(self):
        return [self.bconv2, self.bconv3, self.dense4]

    def forward(self, x):  # x: (N, 1, 8, 8) float32 = pixel / 255
        x = sign_ste(self.bn1(self.conv1(x)))                 # sign1
        x = F.max_pool2d(sign_ste(self.bn2(self.bconv2(x))), 2)  # sign2, pool2
        x = F.max_pool2d(sign_ste(self.bn3(self.bconv3(x))), 2)  # sign3, pool3
        x = x.permute(0, 2, 3, 1).flatten(1)                  # flatten (H, W, C)
        return self.bn4(self.dense4(x))                       # logits (bn4)


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------
def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1):
    """Random integer shift in [-max_shift, max_shift] per image and axis,
    filling with 0 (background)."""
    n, _, h, w = x.shape
    p = max_shift
    xp = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
    bidx = torch.arange(n)[:, None, None]
    out = xp[:, 0][bidx, rows[:, :, None], cols[:, None, :]]
    return out[:, None]


@torch.no_grad()
def evaluate(model, x, y, batch=1024):
    model.eval()
    logits = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    acc = (logits.argmax(1) == y).float().mean().item()
    return acc, logits


def train(args):
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)

    ptr, ytr, pte, yte, te_idx = load_split(0)
    xtr = torch.from_numpy(pixels_to_input(ptr)).permute(0, 3, 1, 2).contiguous()
    xte = torch.from_numpy(pixels_to_input(pte)).permute(0, 3, 1, 2).contiguous()
    ytr_t, yte_t = torch.from_numpy(ytr), torch.from_numpy(yte)

    model = DigitsBNN()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = (len(xtr) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed)

    t0 = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        tot_loss, correct = 0.0, 0
        for i in range(0, len(xtr), args.batch_size):
            b = perm[i:i + args.batch_size]
            xb, yb = xtr[b], ytr_t[b]
            if args.shift > 0:
                xb = random_shift(xb, gen, args.shift)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():  # BinaryNet: clip latent binary weights
                for m in model.binary_modules():
                    m.weight.clamp_(-1.0, 1.0)
            tot_loss += loss.item() * len(b)
            correct += (logits.argmax(1) == yb).sum().item()
        if epoch == 1 or epoch % 5 == 0 or epoch == args.epochs:
            te_acc, _ = evaluate(model, xte, yte_t)
            print(f"epoch {epoch:3d}  loss {tot_loss / len(xtr):.4f}  "
                  f"train(aug) {correct / len(xtr):.4f}  test {te_acc:.4f}  "
                  f"[{time.time() - t0:.1f}s]", flush=True)
    train_time = time.time() - t0

    tr_acc, _ = evaluate(model, xtr, ytr_t)
    te_acc, te_logits = evaluate(model, xte, yte_t)
    print(f"training time {train_time:.1f}s")
    print(f"final train accuracy (eval mode, no aug): {tr_acc:.4f}")
    print(f"final test  accuracy (eval mode):         {te_acc:.4f} "
          f"({int(round(te_acc * len(yte)))}/{len(yte)})")
    return model, (pte, yte, te_idx), te_logits.numpy().astype(np.float32)


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------
def export_weights(model: DigitsBNN, path: str):
    f32 = lambda t: t.detach().cpu().numpy().astype(np.float32)
    w = {}
    # float conv: torch (cout, cin, kh, kw) -> Keras (kh, kw, cin, cout)
    w["conv1/kernel"] = f32(model.conv1.weight.permute(2, 3, 1, 0))
    w["bconv2/kernel"] = f32(sign01(model.bconv2.weight).permute(2, 3, 1, 0))
    w["bconv3/kernel"] = f32(sign01(model.bconv3.weight).permute(2, 3, 1, 0))
    # dense: torch (out, in) with in already in (h, w, c) order -> (in, out)
    w["dense4/kernel"] = f32(sign01(model.dense4.weight).t())
    for name in ("bn1", "bn2", "bn3", "bn4"):
        bn = getattr(model, name)
        w[f"{name}/gamma"] = f32(bn.weight)
        w[f"{name}/beta"] = f32(bn.bias)
        w[f"{name}/mean"] = f32(bn.running_mean)
        w[f"{name}/var"] = f32(bn.running_var)
    w = {k: np.ascontiguousarray(v) for k, v in w.items()}
    assert w["conv1/kernel"].shape == (3, 3, 1, 32)
    assert w["bconv2/kernel"].shape == (3, 3, 32, 64)
    assert w["bconv3/kernel"].shape == (3, 3, 64, 128)
    assert w["dense4/kernel"].shape == (512, 10)
    np.savez(path, **w)
    return w


def write_samples(pixels, labels, test_idx, out_dir, per_class=10):
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):  # keep the directory exactly reproducible
        if f.endswith(".png") or f == "labels.csv":
            os.remove(os.path.join(out_dir, f))
    rows = []
    for c in range(10):
        pos = np.flatnonzero(labels == c)[:per_class]
        for p in pos:
            rows.append((int(p), int(c)))
    rows.sort()
    entries = []
    for p, c in rows:
        # p = position in the test split (== row in digits_torch_eval.npz)
        fname = f"{p:04d}_label{c}.png"
        Image.fromarray(pixels[p], mode="L").save(os.path.join(out_dir, fname),
                                                  optimize=True)
        entries.append((fname, c))
    with open(os.path.join(out_dir, "labels.csv"), "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(["file", "label"])
        wr.writerows(entries)
    return len(entries)


# --------------------------------------------------------------------------
# plain-NumPy reference (NHWC, pybnn formulas) used as a self-check
# --------------------------------------------------------------------------
def numpy_forward(w, pixels: np.ndarray) -> np.ndarray:
    """Recompute bn4 logits from the exported npz in NHWC with NumPy."""
    def sign(x):
        return np.where(x >= 0, np.float32(1), np.float32(-1))

    def conv_same(x, k):  # x (N,H,W,Cin), k (3,3,Cin,Cout), zero padding
        n, h, wd, _ = x.shape
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = np.zeros((n, h, wd, k.shape[3]), np.float32)
        for i in range(3):
            for j in range(3):
                out += xp[:, i:i + h, j:j + wd, :] @ k[i, j]
        return out

    def bn(x, name):
        return ((x - w[f"{name}/mean"]) / np.sqrt(w[f"{name}/var"] + np.float32(BN_EPS))
                * w[f"{name}/gamma"] + w[f"{name}/beta"]).astype(np.float32)

    def pool(x):
        n, h, wd, c = x.shape
        return x.reshape(n, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))

    x = pixels_to_input(pixels)
    x = sign(bn(conv_same(x, w["conv1/kernel"]), "bn1"))
    x = pool(sign(bn(conv_same(x, w["bconv2/kernel"]), "bn2")))
    x = pool(sign(bn(conv_same(x, w["bconv3/kernel"]), "bn3")))
    x = x.reshape(len(x), -1)  # NHWC flatten = (h, w, c) order
    return bn(x @ w["dense4/kernel"], "bn4")


# --------------------------------------------------------------------------
# pybnn model
# --------------------------------------------------------------------------
def to_pybnn(npz_path, out_path=None):
    """Build the pybnn model (the architecture in classify.py) from the exported npz and
    save it if out_path is given."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from classify import build_model

    w = np.load(npz_path)
    model = build_model()
    for name in ("conv1", "bconv2", "bconv3", "dense4"):
        model.get_layer(name).set_weights([w[f"{name}/kernel"]])
    for name in ("bn1", "bn2", "bn3", "bn4"):
        model.get_layer(name).set_weights(
            [w[f"{name}/gamma"], w[f"{name}/beta"], w[f"{name}/mean"], w[f"{name}/var"]])
    if out_path is not None:
        model.save(out_path)
    return model


# --------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shift", type=int, default=1,
                    help="max random pixel shift for augmentation (0 = off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/digits_weights.npz")
    ap.add_argument("--eval-out", default="/tmp/digits_torch_eval.npz")
    ap.add_argument("--samples-dir", default=os.path.join(HERE, "samples"))
    ap.add_argument("--no-samples", action="store_true")
    ap.add_argument("--pybnn-out", default=None,
                    help="also build the pybnn model and save it to this path")
    args = ap.parse_args(argv)

    model, (pte, yte, te_idx), logits = train(args)
    model.eval()

    w = export_weights(model, args.out)
    np.savez(args.eval_out, images=pte, labels=yte.astype(np.int64),
             logits=logits, dataset_index=te_idx.astype(np.int64))
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    print(f"wrote {args.eval_out} ({os.path.getsize(args.eval_out)} bytes)")

    # self-check: NumPy NHWC recomputation from the exported weights
    ref = numpy_forward(w, pte)
    agree = (ref.argmax(1) == logits.argmax(1)).mean()
    print(f"numpy check: argmax agreement {agree:.4f}, "
          f"max |logit diff| {np.abs(ref - logits).max():.3g}, "
          f"numpy test acc {(ref.argmax(1) == yte).mean():.4f}")

    if not args.no_samples:
        n = write_samples(pte, yte, te_idx, args.samples_dir)
        size = sum(os.path.getsize(os.path.join(args.samples_dir, f))
                   for f in os.listdir(args.samples_dir))
        print(f"wrote {n} sample PNGs + labels.csv to {args.samples_dir} "
              f"({size} bytes total)")

    if args.pybnn_out:
        to_pybnn(args.out, args.pybnn_out)
        print(f"wrote pybnn model {args.pybnn_out}")


if __name__ == "__main__":
    main()
