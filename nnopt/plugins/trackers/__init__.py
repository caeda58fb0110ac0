"""Built-in trackers: where a run's metrics stream as they are logged (jsonl, tensorboard, mlflow)."""
