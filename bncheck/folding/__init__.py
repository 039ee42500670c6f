"""Conv-BN folding plugins (kind ``fusion``, registered with ``@bncheck.fusion``; the package has its own name so
that ``bncheck.fusion`` stays the decorator): ``fold`` (the knobbed float64 fold reference and bncheck's own fold),
``cases`` (scenarios, their data, plugin adapters, one evaluation) and ``check`` (the search, diagnosis and
reproducers). Importing the package imports none of them."""
