"""nnopt: runnable, cached pipelines for the optimization of deep neural networks."""

__version__ = "0.1.0"
