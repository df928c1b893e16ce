"""Classify the bundled handwritten-digit images with the bundled binary network.

    python examples/digits/classify.py [--model FILE] [--images DIR] [--repeats N]
    python examples/digits/classify.py --test-set     # accuracy on the 450 held-out test images
                                                      # (needs scikit-learn, which ships them)

The network (digits.bin, trained and exported by train_digits.py with pybnn.torch; 98.4% test
accuracy): a float 3x3 convolution, then binary convolutions and a binary dense layer.  pybnn
folds each BatchNorm + sign into integer thresholds, so the binary layers pass packed bits to
each other; the summary lists the folds.  digits_int8.bin is the same network with int8
first and last layers (98.7%).
"""
import argparse
import csv
import os
import sys
import time

import numpy as np
from PIL import Image

import pybnn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from digits_data import to_input  # noqa: E402


def load_images(folder):
    """(pixels uint8 (N, 8, 8), labels, file names) from folder/labels.csv."""
    with open(os.path.join(folder, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    pixels = np.stack([np.asarray(Image.open(os.path.join(folder, r["file"])).convert("L")) for r in rows])
    return pixels, np.array([int(r["label"]) for r in rows]), [r["file"] for r in rows]


def test_set_accuracy(model):
    """Accuracy on the held-out split of scikit-learn's digits (the split train_digits.py keeps out)."""
    from digits_data import load_split
    _, _, pixels, labels, _ = load_split()
    predicted = model.predict(to_input(pixels)).argmax(axis=1)
    return float((predicted == labels).mean()), int((predicted == labels).sum()), len(labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(HERE, "digits.bin"))
    parser.add_argument("--images", default=os.path.join(HERE, "samples"))
    parser.add_argument("--repeats", type=int, default=20, help="timed runs (median is reported)")
    parser.add_argument("--test-set", action="store_true", help="report the accuracy on scikit-learn's held-out "
                        "test split instead")
    args = parser.parse_args(argv)

    model = pybnn.load_model(args.model)
    if args.test_set:
        accuracy, right, total = test_set_accuracy(model)
        print(f"{os.path.basename(args.model)}: test-set accuracy {accuracy:.1%} ({right}/{total} held-out images)")
        return 0
    model.summary()
    pixels, labels, files = load_images(args.images)
    x = to_input(pixels)  # pixel / 255, the input scaling the model was trained with

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
