"""Training: the Learner (the loop), its callbacks, schedules, checkpoints and DDP."""
