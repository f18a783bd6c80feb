"""Reusable pieces shared by every entry script: configuration, I/O, training, pruning."""
