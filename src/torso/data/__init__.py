"""Data: sources (folders, CSV, image+mask pairs), decoding, joint transforms, loaders, checks.

```python
from torso.data import load_data, load_images, check_data, show_batch
dls = load_data("photos/", task="classify", size=224, batch_size=64)
images, targets = next(iter(dls.train))   # float32 (64, 3, 224, 224) in [0, 1], int64 (64,)
```
"""

from torso.data.cache import PresizeCache
from torso.data.checks import DataReport, check_data
from torso.data.decode import read_image, read_mask
from torso.data.layout import (
    ClassTargets,
    DataLayout,
    LabelTargets,
    MaskTargets,
    NumberTargets,
    Targets,
    TaskWithData,
)
from torso.data.loaders import (
    DataCheckError,
    DataLoaders,
    EpochLoader,
    EpochSampler,
    load_data,
    load_images,
)
from torso.data.show import show_batch
from torso.data.sources import (
    Item,
    Problem,
    Source,
    has_images_and_masks,
    read_classes,
    read_labels,
    read_masks,
    read_numbers,
)
from torso.data.transforms import RESIZE_MODES, Augmentation

__all__ = [
    "RESIZE_MODES",
    "Augmentation",
    "ClassTargets",
    "DataCheckError",
    "DataLayout",
    "DataLoaders",
    "DataReport",
    "EpochLoader",
    "EpochSampler",
    "Item",
    "LabelTargets",
    "MaskTargets",
    "NumberTargets",
    "PresizeCache",
    "Problem",
    "Source",
    "Targets",
    "TaskWithData",
    "check_data",
    "has_images_and_masks",
    "load_data",
    "load_images",
    "read_classes",
    "read_image",
    "read_labels",
    "read_mask",
    "read_masks",
    "read_numbers",
    "show_batch",
]
