"""rebuild: reproducible, hermetic build orchestrator.

A recipe pins every input; rebuild runs the build twice in network-isolated containers that
differ on purpose, compares the artifacts bit for bit, and keeps the evidence in a
content-addressed store (an OCI image layout).
"""

__version__ = "0.1.0"
