"""The local lab: Debian containers reached over real SSH, standing in for real hosts.

Every test, the demo, the Molecule scenarios and the benchmarks run on it.
"""
