"""Perceptual hashes and the near-duplicate search: which images are the same picture, resized,
re-encoded, brighter or darker, without comparing every pair.

An image becomes a 32 x 32 grayscale thumbnail (box-averaged, so a resized copy gives nearly the
same thumbnail), normalised to mean 0 and standard deviation 1 (so a brightness or contrast
change gives the same one). Two signatures are kept:

- ``hash``: 64 bits, the signs of the 8 x 8 lowest-frequency DCT coefficients of the thumbnail
  against their median (pHash), and ``weak``: the WEAK_BITS bits whose coefficients lie closest
  to the median (the ones a re-encoding flips first).
- ``detail``: the thumbnail minus its Gaussian blur (sigma 2 px), normalised: the texture,
  without the overall shape that look-alike images (cells of one class) share.

Two images are near duplicates when (1) their hashes differ in at most MAX_BITS bits, not counting
the weak bits of either image (a Hamming distance that ignores the bits a copy may flip), and
(2) their details correlate at least MIN_CORRELATION (Pearson r; 1 = same texture).
Measured on the demo cells (1,200 images, 128 px) and 7 kinds of copies of 60 of them (halved,
0.7x, +30 and -20 grey levels, x1.3, JPEG q75, 2/3 size JPEG q80): (1) holds for 97-100% of the
copies of each kind (74-100% with the plain Hamming distance); (2) is >= 0.98 for every copy
and <= 0.92 for every pair of distinct cells.

Pairs meeting (1) are found by the pigeonhole rule, not by comparing all pairs: split the hash
into 4 bands of 16 bits. If (1) holds, the hash of one with some of its weak bits flipped (a
"probe", 2^3 per image) is within 3 bits of the other's, so the two agree exactly on at least one
band: each probe's band values are looked up among the sorted band values of all images (binary
search: O(N log N) plus the pairs found). (2) is then one matrix-vector product per image.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter1d

THUMB_SIDE = 32
HASH_SIDE = 8  # 8 x 8 DCT coefficients -> 64 bits
BANDS = 4  # 4 bands of 16 bits: the pigeonhole rule finds every pair within BANDS - 1 bits
MAX_BITS = 3
WEAK_BITS = 3  # each image is also looked up with these of its least certain bits flipped (2^3 probes)
DETAIL_SIGMA = 2.0  # px of the thumbnail: what the blur removes is the shared shape
MIN_CORRELATION = 0.95


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``D @ x`` transforms a column vector of length ``n``."""
    k = np.arange(n)[:, None]
    d = np.cos(math.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


_DCT = _dct_matrix(THUMB_SIDE)
# the Gaussian blur as a matrix (scipy's, edges reflected): blur(x) = _BLUR @ x @ _BLUR.T, microseconds a thumbnail
_BLUR = gaussian_filter1d(np.eye(THUMB_SIDE), DETAIL_SIGMA, axis=0)


def _normalised(values: np.ndarray) -> np.ndarray:
    values = values - values.mean()
    spread = values.std()
    return (values / spread if spread > 1e-3 else np.zeros_like(values)).astype(np.float32)


def signature(rgb: Image.Image) -> tuple[int, np.ndarray, np.ndarray]:
    """(64-bit pHash, its WEAK_BITS least certain bit positions, the normalised THUMB_SIDE^2 detail) of an image.

    A flat image (one grey level) gets hash 0 and a zero detail; ``near_pairs`` leaves it out.
    """
    small = rgb.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX, reducing_gap=2.0)
    gray = np.asarray(small, dtype=np.float64)
    thumb = _normalised(gray)
    low = (_DCT @ thumb @ _DCT.T)[:HASH_SIDE, :HASH_SIDE].flatten()
    middle = np.median(low)
    code = int(np.packbits(low > middle).view(">u8")[0]) if thumb.any() else 0
    weak = np.argsort(np.abs(low - middle), kind="stable")[:WEAK_BITS].astype(np.uint8)
    return code, weak, _normalised(gray - _BLUR @ gray @ _BLUR.T)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of differing bits between uint64 hashes, element-wise."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def probes(hashes: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """N x 2^W uint64: each hash with every subset of its W weak bits flipped (column 0: the hash itself)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    masks = np.uint64(1) << (np.uint64(63) - weak.astype(np.uint64))  # bit i of packbits is 1 << (63 - i)
    columns = [hashes]
    for r in range(1, weak.shape[1] + 1):
        for subset in itertools.combinations(range(weak.shape[1]), r):
            flip = np.bitwise_xor.reduce(masks[:, list(subset)], axis=1)
            columns.append(hashes ^ flip)
    return np.stack(columns, axis=1)


def candidate_pairs(hashes: np.ndarray, weak: np.ndarray | None = None, max_bits: int = MAX_BITS,
                    chunk: int = 1 << 18) -> np.ndarray:
    """Every pair (i < j) whose hashes differ in at most ``max_bits`` bits outside i's or j's weak bits:
    K x 2 int64, sorted. (That is: some probe of one is within ``max_bits`` of the other's hash.)

    ``weak``: N x W bit positions (None: plain Hamming distance). Needs ``max_bits < BANDS``: such a
    probe shares a band value with the other hash, so only images sharing a probe's band value are compared.
    """
    if max_bits >= BANDS:
        raise ValueError(f"the {BANDS}-band search finds pairs within {BANDS - 1} bits, not {max_bits}")
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    queries = probes(hashes, weak) if weak is not None else hashes[:, None]
    ignored = queries[:, -1] ^ hashes  # the last probe flips every weak bit
    owners = np.repeat(np.arange(n), queries.shape[1])
    width, mask = 64 // BANDS, np.uint64((1 << (64 // BANDS)) - 1)
    found = [np.empty(0, dtype=np.int64)]
    for band in range(BANDS):
        shift = np.uint64(band * width)
        keys = (hashes >> shift) & mask
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        wanted = (queries >> shift) & mask
        fresh = np.ones(queries.shape, dtype=bool)  # each band value of an image's probes looked up once
        fresh[:, 1:] = wanted[:, 1:] != wanted[:, :1]
        wanted, owner = wanted[fresh], owners[fresh.ravel()]
        for start in range(0, len(wanted), chunk):
            value, mine = wanted[start:start + chunk], owner[start:start + chunk]
            low = np.searchsorted(ordered, value, "left")
            counts = np.searchsorted(ordered, value, "right") - low
            # every (probe, index with the same band value): positions low .. low + count - 1 of `ordered`
            first = np.repeat(low - np.cumsum(counts) + counts, counts)
            other = order[first + np.arange(int(counts.sum()))]
            mine = np.repeat(mine, counts)
            differ = (hashes[mine] ^ hashes[other]) & ~ignored[mine]
            close = (other != mine) & (np.bitwise_count(differ) <= max_bits)
            i, j = mine[close], other[close]
            found.append(np.minimum(i, j) * n + np.maximum(i, j))
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // n, codes % n], axis=1) if len(codes) else np.empty((0, 2), dtype=np.int64)


def correlation(details: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Pearson correlation of the normalised details of each pair (details: N x side x side, any float type;
    ``pairs`` sorted by their first column, as ``candidate_pairs`` returns them): one matrix-vector
    product per first image."""
    if not len(pairs):
        return np.empty(0, dtype=np.float32)
    flat = details.reshape(len(details), -1).astype(np.float32)
    scores = np.empty(len(pairs), dtype=np.float32)
    firsts = pairs[:, 0]
    bounds = np.flatnonzero(np.diff(firsts)) + 1
    for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(pairs)]):
        scores[start:end] = flat[pairs[start:end, 1]] @ flat[firsts[start]]
    return scores / flat.shape[1]


def near_pairs(hashes: np.ndarray, weak: np.ndarray, details: np.ndarray, max_bits: int = MAX_BITS,
               min_correlation: float = MIN_CORRELATION) -> np.ndarray:
    """Pairs (i < j) of near duplicates (see the module's docstring); flat images are never paired."""
    pairs = candidate_pairs(hashes, weak, max_bits)
    flat = ~details.reshape(len(details), -1).any(axis=1)
    pairs = pairs[~(flat[pairs[:, 0]] | flat[pairs[:, 1]])] if len(pairs) else pairs
    return pairs[correlation(details, pairs) >= min_correlation]


def groups(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected groups (two or more members) of the graph with ``n`` nodes and edges ``pairs``."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs.tolist():
        parent[root(i)] = root(j)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    return [m for m in members.values() if len(m) > 1]
