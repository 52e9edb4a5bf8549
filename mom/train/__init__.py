"""Training: :func:`mom.train.loop.train` around a short loop, with its parts in their own modules (runtime and process
group, optimiser, batches, checkpoints, monitoring, init, resume, the step)."""
