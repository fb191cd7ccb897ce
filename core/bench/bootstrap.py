"""Speed of eval.py's bootstrap intervals: 2,000 resamples of 10,000 images (target: well under a second).

    python -m core.bench.bootstrap                     # 10,000 images, 2 and 5 classes, images and patients
    python -m core.bench.bootstrap --images 100000
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np

from common.errors import UserError, run_cli
from core.evaluation.bootstrap import BootstrapPlan, bootstrap_ci, standard_metrics


def time_bootstrap(images: int, classes: int, resamples: int, per_patient: int | None) -> float:
    """Seconds for one ``bootstrap_ci`` call on random predictions (best of three)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, images)
    probs = rng.dirichlet(np.ones(classes), images)
    clusters = np.arange(images) // per_patient if per_patient else None
    plan = BootstrapPlan(resamples, 0, clusters)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        bootstrap_ci(plan, labels, probs, probs.argmax(axis=1), standard_metrics(classes))
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.bench.bootstrap", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    args = p.parse_args(argv)
    if args.images < 2 or args.resamples < 1:
        raise UserError("--images must be at least 2 and --resamples at least 1")
    print(f"bootstrap 95% intervals, {args.resamples} resamples of {args.images} images (best of 3)")
    for classes, metric in ((2, "ROC-AUC"), (5, "QW kappa")):
        for per_patient, unit in ((None, "images"), (10, "patients of 10 images")):
            seconds = time_bootstrap(args.images, classes, args.resamples, per_patient)
            print(f"  {classes} classes (accuracy, weighted F1, macro recall, {metric}), resampling {unit}: "
                  f"{seconds:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
