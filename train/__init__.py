"""lmspec.train: the trainer that drives any backend through the registry, by name: the data
pipeline (the default corpus that ships with Python, packed rows with segment ids, a
deterministic and resumable order), checkpoints (safetensors + JSON, written atomically), and
the training loop behind ``lmspec train``. The training step itself is a spec stem
(``spec/train_step.py``) that each backend implements."""
