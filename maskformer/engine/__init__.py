"""Training: optimizer groups and schedules of the official recipes (optim), one step (step: AMP), the loop
(loop.Trainer: DDP, exact resume), checkpoints (state), logging (metrics: averages, bar, metrics.jsonl, curves)."""
