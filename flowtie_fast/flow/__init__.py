"""The learned flow of FlowTIE at run time (extra ``flow``: PyTorch).

A small fully convolutional network predicts the phase gradient ("flow") from
the defocused triplet; :class:`FlowModel` loads a TorchScript file (a shipped
model by name, or your own) and predicts, :class:`FlowEnsemble` runs several
for the uncertainty and the trust check. Importing this package does not
import PyTorch: a model does when it is loaded. The network's definition is
:class:`flowtie_fast.flow.model.FlowNet` (imports PyTorch); its training,
loss and data are in :mod:`flowtie_fast.training`.
"""

from .infer import FlowEnsemble, FlowModel, flow_inputs, load_model

__all__ = ["FlowEnsemble", "FlowModel", "flow_inputs", "load_model"]
