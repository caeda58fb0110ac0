"""Built-in normalizers."""
