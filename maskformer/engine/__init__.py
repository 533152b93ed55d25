"""Training: optimizer groups and schedules of the official recipes (optim, schedule), the loop (loop.Trainer: AMP,
DDP, exact resume), logging."""
