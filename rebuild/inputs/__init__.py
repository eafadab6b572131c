"""The inputs wing: pinning and fetching what a build may use.

`lock` writes pins into a recipe; `fetch` is the only door to the network and brings every
input into the store, hash-verified.
"""
