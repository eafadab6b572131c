"""The store wing: where releases and their evidence are kept.

`layout` is the local store, an OCI image layout on disk, and the only writer of it.
"""
