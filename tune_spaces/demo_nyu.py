"""A quick search on the demo NYU set: the default space of `python -m raymc.tune`.

Parameter names are TrainConfig fields (the flags of `python -m raymc.train`, with underscores).
FIXED holds settings every trial uses unless the command line sets them; here: small images and
few epochs, so eight trials finish in minutes on a laptop. The learning-rate range is wide on
purpose: some trials are clearly worse after one epoch, which is what ASHA stops early.
"""

from ray import tune

FIXED = {
    "image_size": 32,
    "epochs": 4,
    "batch": 32,
    "warmup_epochs": 0.5,
    "crop_scale": 0.35,
}

SPACE = {
    "lr": tune.loguniform(1e-3, 0.3),
    "fusion": tune.choice(["concat", "weighted", "gated"]),
    "label_smoothing": tune.uniform(0.0, 0.2),
}
