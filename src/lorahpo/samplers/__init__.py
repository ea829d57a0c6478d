"""Optimizers, each an Optuna sampler; :func:`make_sampler` builds one by name."""

from lorahpo.samplers.registry import OPTIMIZERS, make_sampler

__all__ = ["OPTIMIZERS", "make_sampler"]
