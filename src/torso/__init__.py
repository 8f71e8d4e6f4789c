"""torso: every vision model is a pretrained body plus a task head.

>>> import torso
>>> model = torso.create_model("resnet34", num_outputs=37)   # nn.Sequential(body, head)
>>> body = model[0]; body.channels, body.reductions, body.stats
"""

__version__ = "0.1.0"

from torso.bodies import Body, create_body  # noqa: E402
from torso.heads import create_head  # noqa: E402
from torso.models import (  # noqa: E402
    create_model,
    freeze,
    freeze_to,
    param_groups,
    unfreeze,
)

__all__ = [
    "Body",
    "__version__",
    "create_body",
    "create_head",
    "create_model",
    "freeze",
    "freeze_to",
    "param_groups",
    "unfreeze",
]
