"""Callbacks that hang off the Learner's loop: progress, CSV log, early stopping, save-best,
TensorBoard."""

from torso.callbacks.base import Callback
from torso.callbacks.csv_log import CSVLog
from torso.callbacks.early_stopping import EarlyStopping
from torso.callbacks.progress import Progress
from torso.callbacks.save_best import SaveBest
from torso.callbacks.tensorboard import TensorBoard, tensorboard_available

__all__ = [
    "Callback",
    "CSVLog",
    "EarlyStopping",
    "Progress",
    "SaveBest",
    "TensorBoard",
    "tensorboard_available",
]
