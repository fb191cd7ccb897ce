"""The settings of a training run: one frozen dataclass, saved in config.json and every checkpoint."""
from __future__ import annotations

from dataclasses import dataclass

from common.choices import AUGMENT_POLICIES
from common.errors import UserError

DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
REFERENCE_BATCH = 32  # the lab's batch; DEFAULT_LR was tuned at it (core/training/gpu_defaults.py scales from it)
DEFAULT_WD = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.05}
# learning_rate: a run stopped by a NaN loss continues from its last finite state with a lower -r.
RESUME_OVERRIDES = ("epochs", "learning_rate", "device", "workers", "save_every", "save_minutes", "amp", "compile", "compile_mode",
                    "tensorboard", "deterministic")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; saved in config.json and in each checkpoint."""

    models: tuple[str, ...] = ("resnet18",)
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    data: str = "new_dataset"
    layout: str = "auto"
    split: str = "patient"
    image_size: int = 224
    head: str = "linear"
    zero_init_residual: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = -1
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: default, reduce-overhead, max-autotune
    sync_bn: bool = False
    cache: bool = True
    out: str = "storage"
    name: str | None = None
    save_every: int = 0
    save_minutes: float = 10.0
    pretrained: str | None = None
    freeze_epochs: int = 0
    backbone_lr_scale: float = 1.0
    class_weights: str = "none"
    balanced_sampler: bool = False
    folds: int = 0  # k-fold cross-validation over train+valid (core/training/cv.py); 0 = one train/valid split
    tensorboard: bool = False
    augment: str | None = None  # rotate, upright, none; None until fit() fills in the layout's default
    ema: bool = False
    ema_decay: float = 0.999
    deterministic: bool = False


def check_config(cfg: TrainConfig) -> None:
    """UserError naming the first setting out of its range."""
    checks = [(cfg.epochs >= 1, f"-e/--epochs must be at least 1 (got {cfg.epochs})"),
              (cfg.batch_size >= 1, f"-b/--batch_size must be at least 1 (got {cfg.batch_size})"),
              (cfg.learning_rate > 0, f"-r/--learning_rate must be positive (got {cfg.learning_rate})"),
              (cfg.weight_decay >= 0, f"-wd/--weight_decay must be >= 0 (got {cfg.weight_decay})"),
              (0 <= cfg.momentum < 1, f"-mm/--momentum must be in [0, 1) (got {cfg.momentum})"),
              (0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1) (got {cfg.label_smoothing})"),
              (cfg.warmup_epochs >= 0, f"--warmup-epochs must be >= 0 (got {cfg.warmup_epochs})"),
              (32 <= cfg.image_size <= 1024, f"--image-size must be between 32 and 1024 (got {cfg.image_size})"),
              (cfg.save_every >= 0, f"--save-every must be >= 0 (got {cfg.save_every})"),
              (cfg.save_minutes >= 0, f"--save-minutes must be >= 0 (got {cfg.save_minutes})"),
              (0 <= cfg.freeze_epochs, f"--freeze-epochs must be >= 0 (got {cfg.freeze_epochs})"),
              (cfg.folds == 0 or cfg.folds >= 2, f"--folds must be at least 2 (got {cfg.folds})"),
              (cfg.augment in (None, *AUGMENT_POLICIES), f"--augment must be one of {', '.join(AUGMENT_POLICIES)}"),
              (0 < cfg.ema_decay < 1, f"--ema-decay must be in (0, 1) (got {cfg.ema_decay})"),
              (cfg.backbone_lr_scale > 0, f"--backbone-lr-scale must be positive (got {cfg.backbone_lr_scale})")]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
