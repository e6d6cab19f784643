"""Evaluation of Foedus' ops models on public data sets.

`metrics` holds the shared, pure-numpy detection metrics (point-adjusted and plain F1, AUC-PR,
root-cause HitRate@P%) and the unsupervised threshold rules; each data set has its own module
(`smd`, ...) that loads it and runs the evaluation.
"""
