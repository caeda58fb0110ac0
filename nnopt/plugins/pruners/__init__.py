"""Built-in pruners (kind ``pruners``): ``magnitude`` and its ``random`` control."""
