"""Recipes: one TOML file per paper, run by ``exvo reproduce NAME`` into a paper-vs-ours table.

``load`` (recipe files and their rows) · ``run`` (plan, skip what exists, run the steps) ·
``table`` (the side-by-side table, ``table.md``/``table.csv``).
"""
