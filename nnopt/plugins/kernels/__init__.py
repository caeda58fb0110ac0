"""Built-in kernels (kind ``kernels``): empirical and analytic neural tangent kernels."""
