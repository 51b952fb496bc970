"""Datasets read from local files into plain rows (dicts) ready for ``datasets.Dataset.from_list``.

``mmau``: MMAU-format audio question answering (evaluation) and AVQA-style multiple-choice
training data, with the recipe prompt and the per-category accuracy tables of the paper.
``synthetic_audio``: a seeded, generated multiple-choice audio QA benchmark in MMAU's format and
categories (numpy only), for the offline miniature.
These modules import only the standard library, numpy and ``adrpo.errors``.
"""
