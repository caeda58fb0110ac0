"""Plugin scaffolding: ``nnopt new-plugin NAME --kind KIND ...`` (``writer.scaffold``).

``catalog`` lists the example component of each kind (its source is a package data file in
``templates/``), ``names`` checks the name and kinds given, ``project`` writes the other files
of the distribution (pyproject, pipeline, test, README), ``writer`` puts them on disk.
"""
