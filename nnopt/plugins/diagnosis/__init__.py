"""The instruments and the findings of the ``diagnose`` stage: why a network will not train.

``at_init`` and ``mean_field`` measure the network at initialization, ``curvature``,
``noise_scale``, ``lr_range`` and ``probe_callbacks`` measure it while it trains for a few
steps, and ``findings`` reads those measurements into ranked findings with a pipeline patch
each (the stage is ``nnopt.plugins.stages.diagnose``).
"""
