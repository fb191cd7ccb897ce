"""Reporting: run curves and confusion matrices (plot.py), the experiment report (report.py), and which
evaluations a run holds and whether they are stale."""
