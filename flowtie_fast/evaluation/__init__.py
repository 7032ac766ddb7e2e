"""Evaluation against a known ground truth (research; the runtime never imports it).

- :mod:`~flowtie_fast.evaluation.evaluate`: every method on every case of a
  folder, the phase errors and their table;
- :mod:`~flowtie_fast.evaluation.phantom`: the demonstration's phase object.

Each module is imported on its own; this package imports none of them.
"""
