"""The evidence wing: what a release's statements say and how they are signed.

`provenance` (SLSA provenance, test results) and `sbom` (CycloneDX) are pure functions of a
build's facts; `sign` owns keys, DSSE and Sigstore bundles; `intoto` the in-toto links and
layout. Nothing here runs a build or reads the network.
"""
