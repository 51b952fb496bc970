"""Datasets read from local files into plain rows (dicts) ready for ``datasets.Dataset.from_list``.

``mmau``: MMAU-format audio question answering (evaluation) and AVQA-style multiple-choice
training data, with the recipe prompt and the per-category accuracy tables of the paper.
This package imports only the standard library and ``adrpo.errors``.
"""
