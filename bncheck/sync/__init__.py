"""Synchronised BatchNorm plugins on real torch.distributed ranks: ``reference`` (the knobbed float64 sync
reference and the comparison), ``check`` (the search, diagnosis and reproducers; the rank processes are
``ranks``) and ``syncbn`` (bncheck's own SyncBatchNorm). Importing the package imports none of them."""
