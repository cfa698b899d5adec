"""lmspec.align: the alignment stages (SFT, reward models, DPO, KTO, GRPO, PPO) on top of the
trainer, behind ``lmspec align``. The losses themselves are spec stems."""
