"""The learned flow of FlowTIE (extra ``flow``: PyTorch).

A small fully convolutional network predicts the phase gradient ("flow") from
the defocused triplet; it is trained with a composite loss (flow, continuity,
phase) whose Poisson integration is the solver's own spectral operator.
This package holds the model and the loss; training, the shipped weights and
``method="flowtie"`` come with the rest of that issue.
"""

from .loss import CompositeLoss, SpectralOperators
from .infer import FlowEnsemble, FlowModel, load_model
from .model import FlowNet, flow_inputs

__all__ = ["CompositeLoss", "FlowEnsemble", "FlowModel", "FlowNet", "SpectralOperators",
           "flow_inputs", "load_model"]
