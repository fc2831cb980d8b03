"""The benchmark's phases and what they share; bench/bench.py runs them."""
