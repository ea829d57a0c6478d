"""Blind human preference evaluation: answers side by side, votes, win rates and rankings.

* :mod:`~lorahpo.preference.generate` writes each model's answers to a set of prompts;
* :mod:`~lorahpo.preference.answers` reads those answers;
* :mod:`~lorahpo.preference.store` keeps raters and votes, and hands each rater each comparison
  once;
* :mod:`~lorahpo.preference.names` says when two typed names are the same rater;
* :mod:`~lorahpo.preference.stats` turns votes into win rates, a ranking, rater agreement and
  the votes a verdict needs;
* :mod:`~lorahpo.preference.app` is the web app raters (and, with a token, the organiser) use;
* :mod:`~lorahpo.preference.cli` holds the ``generate`` and ``preference`` commands.
"""
