"""Training of the flow network (research, extra ``flow``: PyTorch).

- :mod:`~flowtie_fast.training.data`: training samples from simulated cases
  and the corpus, augmentation and tiling;
- :mod:`~flowtie_fast.training.loss`: the composite loss (flow, continuity,
  phase) with the solver's spectral operators in PyTorch;
- :mod:`~flowtie_fast.training.train`: the training loop, checkpoints and the
  TorchScript export read by :class:`flowtie_fast.flow.FlowModel`.

The runtime (:mod:`flowtie_fast.flow`) never imports this package. Each
module is imported on its own; this package imports none of them.
"""
