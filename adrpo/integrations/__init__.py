"""Seams into other RL frameworks (floor 2, beside ``adrpo.llm``).

Each module here is loaded by its framework's own plugin mechanism and is imported by no other
part of adrpo; the math stays in :mod:`adrpo.core`. ``verl``: ADRPO's per-sample KL coefficient
inside verl's actor loss (``pip install "adrpo[verl]"``, see ``docs/verl.md``).
"""
