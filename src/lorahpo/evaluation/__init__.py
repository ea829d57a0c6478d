"""Downstream evaluation of a study's adapters with lm-evaluation-harness.

- :mod:`.tasks`: the task names lorahpo knows (offline ones built from PyPI data, the paper's
  four from lm-eval);
- :mod:`.bbh` and :mod:`.humaneval`: the offline task builders;
- :mod:`.sandbox`: where generated code runs;
- :mod:`.harness`: the lm-eval wrapper; :mod:`.runner`: ``lorahpo evaluate``;
- :mod:`.store`: results in the study folder, reused across runs.
"""
