"""The library behind the scripts, grouped by concern. Each group imports only from the groups below it:

    reporting/   report (Markdown/HTML experiment report), plots (curves and matrices of several runs),
                 evalfolder and freshness (which evaluations a run has, and whether they are stale)
    deploy/      predict (new images, one model or an ensemble), export (TorchScript and ONNX)
    training/    trainer (fit: data to run folder), config, ema, phases, signals, resume, run_folder,
                 determinism, gpu_defaults, pretrained, tensorboard, cv and cvsummary (k-fold runs)
    evaluation/  evaluate (a split's outputs), metrics, bootstrap, per_patient, calibration, threshold,
                 fitted (what eval.py fits on valid), ensemble, oof, baseline, evalfigures, gradcam
    (shared)     engine (step, epoch, evaluation, prediction), checkpoint, runs (run folders), tta,
                 hardware, distributed, cli, extras, bench/

Training sits above evaluation because it uses it: validation metrics, TensorBoard's confusion
matrices, the out-of-fold scores of a CV run. ``models`` and ``data`` sit below all of core and
``common`` below everything (tests/test_layers.py checks the order).
"""
