"""The optional sampler methods a study loop calls: ``ready(study)`` and ``close()``."""

import optuna

from lorahpo.samplers import protocol


class Waiting(optuna.samplers.RandomSampler):
    """A sampler with both methods: never ready, and counting its closes."""

    closed = 0

    def ready(self, study):
        return False

    def close(self):
        self.closed += 1


def test_a_plain_optuna_sampler_is_always_ready_and_has_nothing_to_close():
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    assert protocol.ready(sampler, study)
    protocol.close(sampler)  # no close method: nothing happens


def test_a_samplers_own_methods_are_called():
    sampler = Waiting()
    study = optuna.create_study(sampler=sampler)
    assert not protocol.ready(sampler, study)
    protocol.close(sampler)
    assert sampler.closed == 1
