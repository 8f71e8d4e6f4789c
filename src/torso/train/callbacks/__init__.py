"""Callbacks that hang off the Learner's loop: progress, CSV log, early stopping, save-best,
TensorBoard."""

from torso.train.callbacks.base import EVENTS, Callback, CancelFit
from torso.train.callbacks.csv_log import CSVLog
from torso.train.callbacks.early_stopping import EarlyStopping
from torso.train.callbacks.progress import Progress
from torso.train.callbacks.save_best import SaveBest
from torso.train.callbacks.tensorboard import TensorBoard, tensorboard_available

__all__ = [
    "Callback",
    "CancelFit",
    "EVENTS",
    "CSVLog",
    "EarlyStopping",
    "Progress",
    "SaveBest",
    "TensorBoard",
    "tensorboard_available",
]
