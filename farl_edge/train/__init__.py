"""Training library behind the ``train/`` programs (run with torchrun)."""
