"""probret.train: the torch side: backbone, fusion and probabilistic heads, losses, datasets,
trainer, evaluation, checkpoints, and the procedural video world."""
