"""POSIX behaviour of an active snapshot, as a local filesystem gives it.

Every test runs in the merged view of a three-layer chain that `world.py`
builds and describes (which names each layer holds, what the middle layer
changes); `conftest.py` gives it to the tests as the `chain` fixture, and
`helpers.py` holds the system-call helpers. One module per topic.
"""
