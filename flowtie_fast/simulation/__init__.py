"""Simulated data with a known ground truth (research; the runtime never imports it).

- :mod:`~flowtie_fast.simulation.simulate`: 4D-STEM focal triplets by abTEM
  multislice (extra ``sim``), with the exact phase and its gradient;
- :mod:`~flowtie_fast.simulation.specimens`: crystals, interfaces, layered,
  amorphous and defective specimens (ASE);
- :mod:`~flowtie_fast.simulation.sweep`: the resumable corpus of many series
  planned from a TOML recipe;
- :mod:`~flowtie_fast.simulation.acquisition`: dose, detector gain, drift and
  source blur applied to simulated patterns;
- :mod:`~flowtie_fast.simulation.optics`: Fresnel propagation of a known
  phase object to a focal triplet (no abTEM needed).

Each module is imported on its own; this package imports none of them.
"""
