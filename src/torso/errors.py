"""Errors a user can cause, with messages in the user's words."""


class TorsoError(Exception):
    """A problem with what the user gave torso: a file, an argument, a backbone name.

    The message names the offending thing and says what is wrong; the CLI prints it and exits
    with `exit_code` (2: a bad argument or file; 1: problems found in the data).
    """

    exit_code = 2


class UnknownBackboneError(TorsoError, ValueError):
    """A backbone name that neither timm nor torso's torchvision registry knows."""


class WeightsUnavailableError(TorsoError):
    """Pretrained weights that cannot be found locally or fetched."""


class NotExplainableError(TorsoError):
    """`Predictor.explain` or `torso interpret` asked of a model whose task has no class
    activation map (its answer is not one class score per image)."""

    exit_code = 1
