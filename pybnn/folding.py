"""Exact folding of monotone per-channel float chains into thresholds.

A BatchNormalization (or any chain of per-channel monotone float operations) followed by a
Sign becomes one per-channel threshold and direction.  Instead of solving x*s + t >= 0 in
algebra (which can disagree with the float32 evaluation by one unit at the boundary), we
bisect on the predicate itself, evaluated with the very float32 operations the unfolded
model runs.  So a folded model predicts exactly what the unfolded one does.

The predicate `positive(v) -> bool array (C,)` says where the chain's output is +1 for a
value v broadcast per channel; it must be monotone in v for each channel.  The result is
(thr, direction) with the Sign rule: -1 where direction >= 0 and v < thr, or direction < 0
and v > thr (see reference.threshold_negative).
"""
import numpy as np


def _bisect(positive, lo, hi, rising):
    """Per channel, the first value in [lo, hi] where positive() holds (rising) or the last
    value where it holds (falling); lo/hi are int64 arrays of a monotone integer domain."""
    lo, hi = lo.copy(), hi.copy()
    while np.any(lo < hi):
        active = lo < hi
        mid = lo + (hi - lo) // 2 + np.where(rising, 0, 1)  # falling: round up to progress
        ok = positive(np.where(active, mid, lo))
        new_lo = np.where(rising, np.where(ok, lo, mid + 1), np.where(ok, mid, lo))
        new_hi = np.where(rising, np.where(ok, mid, hi), np.where(ok, hi, mid - 1))
        lo, hi = np.where(active, new_lo, lo), np.where(active, new_hi, hi)
    return lo


def integer_threshold(positive, lo, hi, channels):
    """Threshold over the integers in [lo, hi] (e.g. an accumulator's range), as int64 arrays."""
    raw = positive

    def positive(v):  # the chain may overflow to +-inf at the domain's ends: still monotone
        with np.errstate(over="ignore", invalid="ignore"):
            return raw(v)

    lo_a = np.full(channels, lo, np.int64)
    hi_a = np.full(channels, hi, np.int64)
    at_lo, at_hi = positive(lo_a), positive(hi_a)
    falling = at_lo & ~at_hi
    thr = _bisect(positive, lo_a, hi_a, ~falling)
    # Constant channels: always +1 -> "v < lo" never holds; always -1 -> "v < hi + 1" always does.
    thr = np.where(at_lo & at_hi, lo, np.where(~at_lo & ~at_hi, hi + 1, thr))
    return thr, np.where(falling, -1, 1).astype(np.int8)


# float32 values ordered as integers: the key is monotone in the float value (finite floats).
def _float_to_key(f):
    i = np.asarray(f, np.float32).view(np.int32).astype(np.int64)
    return np.where(i >= 0, i, -(i & 0x7FFFFFFF))


def _key_to_float(k):
    k = np.asarray(k, np.int64)
    bits = np.where(k >= 0, k, (-k) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def float_threshold(positive, channels):
    """Threshold over all finite float32 values, as float32 arrays (thr, direction)."""
    big = np.finfo(np.float32).max
    lo, hi = int(_float_to_key(-big)), int(_float_to_key(big))
    thr_key, direction = integer_threshold(lambda k: positive(_key_to_float(k)), lo, hi, channels)
    thr = _key_to_float(np.clip(thr_key, lo, hi))
    # Constant channels map to +-infinity so every finite value falls on one side.
    thr = np.where(thr_key < lo, -np.inf, np.where(thr_key > hi, np.inf, thr)).astype(np.float32)
    return thr, direction
