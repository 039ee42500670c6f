"""The GPU check's Python side (``scripts/gpu-check.sh``): ``env`` (the machine it ran on) and ``report``
(``python -m bncheck.gpu.report``: the report and the performance targets). Importing the package imports neither."""
