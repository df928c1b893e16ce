"""scikit-learn's handwritten digits as the digits example uses them (no download: the data set
ships with scikit-learn).

The 1797 images are 8x8 with values 0..16; as pixels they are min(16 * value, 255) (uint8,
what the bundled sample PNGs hold) and the network's input is pixel / 255.  The split is
fixed: 75% training, 25% test (450 images), stratified, random_state=0.

    python examples/digits/digits_data.py samples/    # (re)writes the bundled sample images
"""
import csv
import os
import sys

import numpy as np

TEST_SIZE, SPLIT_SEED = 0.25, 0


def load_split():
    """(train pixels, train labels, test pixels, test labels, test indices into the data set);
    pixels are uint8 (N, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.minimum(digits.images.astype(np.int64) * 16, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_SIZE, random_state=SPLIT_SEED,
                                   stratify=labels)
    return pixels[train], labels[train], pixels[test], labels[test], test


def to_input(pixels):
    """uint8 pixels (N, 8, 8) or (N, 8, 8, 1) -> the float32 NHWC input (N, 8, 8, 1) = pixel / 255."""
    pixels = np.asarray(pixels)
    return (pixels.astype(np.float32) / np.float32(255)).reshape(len(pixels), 8, 8, 1)


def write_samples(folder, per_class=10):
    """The first `per_class` test images of each class as PNGs named <position in the test
    split>_label<label>.png, plus labels.csv (the bundled samples/)."""
    from PIL import Image

    _, _, pixels, labels, _ = load_split()
    os.makedirs(folder, exist_ok=True)
    rows = sorted((int(p), c) for c in range(10) for p in np.flatnonzero(labels == c)[:per_class])
    with open(os.path.join(folder, "labels.csv"), "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "label"])
        for p, c in rows:
            name = f"{p:04d}_label{c}.png"
            Image.fromarray(pixels[p]).save(os.path.join(folder, name), optimize=True)
            writer.writerow([name, c])


if __name__ == "__main__":
    write_samples(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "samples"))
