"""The library behind the scripts.

    config      TrainConfig: every setting of a run
    trainer     fit(): one architecture from data to run folder (setup, epochs, checkpoints)
    engine      the per-batch step, one epoch, evaluation and prediction, optimizer and schedule
    checkpoint  atomic saving, safe loading, rebuilding a model from a checkpoint
    runs        run folders: history, config, finding runs, storage/latest
    metrics     metrics and confusion matrices; plots: curves and matrices of several runs
    report      the Markdown/HTML experiment report
    hardware    device choice and precision; distributed: torchrun; signals: Ctrl-C/SIGTERM
    pretrained  ImageNet weights; gradcam: Grad-CAM heat maps; errors: one-line user errors
    bench       the speed benchmark behind bench.py
"""
