"""Synchronised BatchNorm plugins on real torch.distributed ranks: ``reference`` (the knobbed float64 sync
reference and the comparison), ``facets`` (what a finding's scope is stated in), ``cases`` (the scenario strategy
and one run on the ranks, whose processes are ``ranks``), ``diagnosis``, ``search`` (the rounds, with the ledger of
named findings), ``probes`` (directed probes of expected ids), ``check`` (``check_sync``, results, reproducers) and
``syncbn`` (bncheck's own SyncBatchNorm). Importing the package imports none of them."""
