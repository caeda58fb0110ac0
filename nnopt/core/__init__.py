"""The engine: spec validation, plugin registry, planning, content-addressed store, runner.

It knows the component *kinds* and their interfaces, never a particular component.
"""
