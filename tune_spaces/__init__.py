"""raymc's search spaces (`python -m raymc.tune --space NAME`), installed as raymc.tune_spaces."""
