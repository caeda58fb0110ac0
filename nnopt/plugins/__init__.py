"""Built-in components. Each registers through nnopt's own entry points, as a plugin would."""
