"""The ArtSeg networks in the form the exports carry: modules that end in a probability.

ArtSeg keeps logits in its networks (training uses ``BCEWithLogitsLoss``) and applies the sigmoid / softmax in
:class:`artseg_core.predict.model.ArtifactModel`. An exported network is run by other tools, so it returns the
probability itself: these subclasses and wrappers add only that last step and keep the parameter names, so a
state dict of the engine's networks loads into them unchanged.
"""
from __future__ import annotations

import torch

from artseg_core.nets.unet import ArtSegUNet

__all__ = ["ArtSegUNetProbability", "ClassifierProbability", "unet_for_export", "classifier_for_export"]


class ArtSegUNetProbability(ArtSegUNet):
    """:class:`~artseg_core.nets.unet.ArtSegUNet` whose ``forward`` returns the artifact probability.

    Same constructor and state dict as the U-Net; ``forward(x)`` equals ``ArtSegUNet.probability(x)``.
    This is the architecture named in the bioimage.io package's ``pytorch_state_dict`` weights.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - documented on the class
        return torch.sigmoid(super().forward(x).float())


class ClassifierProbability(torch.nn.Module):
    """The image classifier returning p(artifact), shape (N, 1), for a normalised, resized (N, 1, S, S) input.

    Parameters
    ----------
    classifier : torch.nn.Module
        ArtSeg's ResNet classifier (two logits: clean, artifact).
    """

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - documented on the class
        return torch.softmax(self.classifier(x).float(), dim=1)[:, 1:2]


def unet_for_export(unet: ArtSegUNet) -> ArtSegUNetProbability:
    """A CPU float32 copy of ``unet`` as :class:`ArtSegUNetProbability`, in eval mode.

    Parameters
    ----------
    unet : ArtSegUNet
        The trained U-Net of an :class:`~artseg_core.predict.model.ArtifactModel`.

    Returns
    -------
    ArtSegUNetProbability
    """
    net = ArtSegUNetProbability(**unet.config())
    net.load_state_dict({k: v.detach().float().cpu() for k, v in unet.state_dict().items()})
    return net.eval()


def classifier_for_export(classifier: torch.nn.Module) -> ClassifierProbability:
    """A CPU float32 copy of the classifier wrapped in :class:`ClassifierProbability`, in eval mode.

    Parameters
    ----------
    classifier : torch.nn.Module
        The trained ResNet of an :class:`~artseg_core.predict.model.ArtifactModel`.

    Returns
    -------
    ClassifierProbability
    """
    import copy

    return ClassifierProbability(copy.deepcopy(classifier).float().cpu()).eval()
