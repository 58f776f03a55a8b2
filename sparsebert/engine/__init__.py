"""The engine: one training loop, runtimes (device, precision), optimizers, crash-safe files."""
