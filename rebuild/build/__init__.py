"""The build wing: from a recipe to two compared runs.

`recipe` (the format), `variations` and `plan` (pure data), `sandbox` (the only door to
Docker), `compare` and `explain` (what differs and why), and `image` (base images).
"""
