"""Speed measurements behind bench.py (each module also runs alone: ``python -m core.bench.models``)."""

# bench.py --sections; here, not in suite.py, so that --help does not import torch.
SECTIONS = ("models", "pipeline", "train", "eval", "memory", "lab", "audit")
