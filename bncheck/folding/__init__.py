"""Conv-BN folding plugins (kind ``fusion``, registered with ``@bncheck.fusion``; the package has its own name so
that ``bncheck.fusion`` stays the decorator): ``fold`` (the knobbed float64 fold reference and bncheck's own fold),
``cases`` (scenarios, their data, plugin adapters, one evaluation), ``facets`` (what a finding's scope is stated
in), ``diagnosis``, ``search`` (the rounds, with the ledger of named findings), ``probes`` (directed probes of
expected ids), ``repro`` (reproducers) and ``check`` (``check_fusion``). Importing the package imports none of
them."""
