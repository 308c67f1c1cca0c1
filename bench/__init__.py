"""`python -m bench`: anima against diffusers' Anima pipeline on identical full-size random weights.

Not a test suite: it prints and writes numbers (bench/results/*.json and a PNG chart), it asserts
nothing about speed. See `bench/__main__.py` for the flags.
"""
