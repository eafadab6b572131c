"""The release wing: what happens to a stored release.

`verify` and `policy` check it, `reproduce` rebuilds it and judges the result, `approve` signs
a decision, `report` tells its story and `export` packs it into a bundle.
"""
