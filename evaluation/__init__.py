"""Evaluation sets made from MNIST's test split: user-style photos and drawings, and other writers' captures.

Used by the accuracy tests, `make bench` and `python -m bench.compare_models`; never for training or tuning.
"""
