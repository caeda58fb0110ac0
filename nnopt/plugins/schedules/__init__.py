"""Built-in schedules."""
