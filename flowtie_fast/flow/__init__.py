"""The learned flow of FlowTIE (extra ``flow``: PyTorch).

A small fully convolutional network predicts the phase gradient ("flow") from
the defocused triplet; it is trained with a composite loss (flow, continuity,
phase) whose Poisson integration is the solver's own spectral operator.
This package holds the network, its loss, inference (:class:`FlowModel`,
the shipped models by name) and training (:mod:`flowtie_fast.flow.train`).
"""

from .loss import CompositeLoss, SpectralOperators
from .infer import FlowEnsemble, FlowModel, load_model
from .model import FlowNet, flow_inputs

__all__ = ["CompositeLoss", "FlowEnsemble", "FlowModel", "FlowNet", "SpectralOperators",
           "flow_inputs", "load_model"]
