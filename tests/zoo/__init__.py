"""A zoo of BatchNorm implementations for testing bncheck itself.

``reference`` holds a from-scratch BatchNorm (``ScratchBN``) and correct variants of it that bncheck must pass;
``mutants`` holds subclasses with exactly one known defect each, tagged with the catalog id bncheck should name;
``plugins`` registers all of them as bncheck plugins (load it with ``--plugin tests/zoo/plugins.py``).
"""
