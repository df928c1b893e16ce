"""Classify the bundled handwritten-digit images with the bundled binary network.

    python examples/digits/classify.py [--threads N] [--images DIR] [--model FILE]

The network (trained by train_digits.py on scikit-learn's digits, 99.3% test accuracy):
a float 3x3 convolution, then binary convolutions and a binary dense layer whose
BatchNorm + Sign pairs pybnn folds into integer thresholds, so the binary layers pass
packed bits to each other.
"""
import argparse
import csv
import os
import sys
import time

import numpy as np
from PIL import Image

import pybnn
from pybnn import layers as L

HERE = os.path.dirname(os.path.abspath(__file__))


def build_model():
    """The architecture, written the way a pybnn user writes it."""
    return pybnn.Sequential([
        L.Input((8, 8, 1)),
        L.Conv2D(32, 3, padding="same", use_bias=False, name="conv1"),
        L.BatchNormalization(epsilon=1e-5, name="bn1"),
        L.Sign(name="sign1"),
        L.BinaryConv2D(64, 3, padding="same", pad_value=0, name="bconv2"),
        L.BatchNormalization(epsilon=1e-5, name="bn2"),
        L.Sign(name="sign2"),
        L.MaxPool2D(2, name="pool2"),
        L.BinaryConv2D(128, 3, padding="same", pad_value=0, name="bconv3"),
        L.BatchNormalization(epsilon=1e-5, name="bn3"),
        L.Sign(name="sign3"),
        L.MaxPool2D(2, name="pool3"),
        L.Flatten(name="flatten"),
        L.BinaryDense(10, name="dense4"),
        L.BatchNormalization(epsilon=1e-5, name="bn4"),
        L.Softmax(name="softmax"),
    ], name="digits_bnn")


def load_images(folder):
    """(pixels uint8 (N, 8, 8, 1), labels, file names) from folder/labels.csv."""
    with open(os.path.join(folder, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    pixels = np.stack([np.asarray(Image.open(os.path.join(folder, r["file"])).convert("L")) for r in rows])
    return pixels[..., None], np.array([int(r["label"]) for r in rows]), [r["file"] for r in rows]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(HERE, "digits.bin"))
    parser.add_argument("--images", default=os.path.join(HERE, "samples"))
    parser.add_argument("--repeats", type=int, default=20, help="timed runs (median is reported)")
    args = parser.parse_args(argv)

    model = build_model().load(args.model)
    model.summary()
    pixels, labels, files = load_images(args.images)
    x = pixels.astype(np.float32) / np.float32(255)  # the input scaling the model was trained with

    probs = model.predict(x)
    predicted = probs.argmax(axis=1)
    for name, p, label, row in zip(files, predicted, labels, probs):
        mark = "" if p == label else "   <-- wrong"
        print(f"{name:<22} predicted {p} ({row[p]:.2f})  label {label}{mark}")

    batch_ms, single_ms = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.predict(x)
        batch_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        model.predict(x[:1])
        single_ms.append((time.perf_counter() - t0) * 1e3)
    accuracy = float((predicted == labels).mean())
    print(f"\naccuracy: {accuracy:.1%} on {len(labels)} images ({(predicted != labels).sum()} wrong)")
    print(f"time: {np.median(batch_ms) / len(x):.3f} ms/image in a batch of {len(x)}, "
          f"{np.median(single_ms):.3f} ms for one image (median of {args.repeats}; kernels: {pybnn.cpu.get_isa()})")
    return 0 if accuracy > 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
