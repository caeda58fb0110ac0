"""Built-in activations."""
