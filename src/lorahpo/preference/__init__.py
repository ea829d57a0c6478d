"""Blind human preference evaluation: answers side by side, votes, win rates and rankings.

* :mod:`~lorahpo.preference.generate` writes each model's answers to a set of prompts;
* :mod:`~lorahpo.preference.store` keeps answers and votes and picks the next pair to judge;
* :mod:`~lorahpo.preference.stats` turns votes into win rates, a ranking and rater agreement;
* :mod:`~lorahpo.preference.app` is the web app raters use;
* :mod:`~lorahpo.preference.cli` holds the ``generate`` and ``preference`` commands.
"""
