"""ResNet with stochastic depth on ImageNet: learning rate, survival probability, regularization.

A dict of Ray Tune domains; names are TrainConfig fields. `pL` is the survival probability of
the last residual block (decaying linearly from 1 at the first; 1.0 turns stochastic depth off).

    python -m raymc.tune --space tune_spaces/sdresnet_imagenet.py --data /data/imagenet \
        --model sd_resnet50 --epochs 16 --num-samples 24 --workers-per-trial 8
"""

from ray import tune

FIXED = {"dataset": "imagenet"}

SPACE = {
    "lr": tune.loguniform(0.02, 0.8),
    "pL": tune.uniform(0.5, 1.0),
    "mixup": tune.uniform(0.0, 0.4),
    "label_smoothing": tune.uniform(0.0, 0.2),
    "weight_decay": tune.loguniform(1e-5, 1e-3),
}
