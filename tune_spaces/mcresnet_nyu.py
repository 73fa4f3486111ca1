"""MCResNet on NYU Depth V2 scenes: learning rates per stream, fusion, regularization.

An Optuna define-by-run space: `space(trial)` calls `trial.suggest_*` with TrainConfig field
names, and ordinary Python decides which parameters a trial has (conditional parameters).

    python -m raymc.tune --space tune_spaces/mcresnet_nyu.py --data data/nyu10 \
        --model mc_resnet50 --epochs 30 --num-samples 40 --metric val_mean_class_acc
"""

FIXED = {"dataset": "nyu"}


def space(trial):
    trial.suggest_float("lr", 1e-2, 0.3, log=True)  # fusion module and classifier head
    trial.suggest_float("stream1_lr", 3e-3, 0.3, log=True)  # RGB trunk
    trial.suggest_float("stream2_lr", 3e-3, 0.3, log=True)  # depth trunk
    fusion = trial.suggest_categorical("fusion", ["concat", "weighted", "gated"])
    if fusion == "concat":  # a conditional parameter: only the concat head is searched with dropout
        trial.suggest_float("dropout", 0.0, 0.5)
    trial.suggest_float("label_smoothing", 0.0, 0.2)
    trial.suggest_float("mixup", 0.0, 0.4)
