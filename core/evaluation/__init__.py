"""Evaluation: a split's predictions turned into metrics with intervals, per-patient results, operating
points and temperatures fitted on valid, ensembles, out-of-fold scores and the figures eval.py draws."""
