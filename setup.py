"""Builds the compiled rolling-checksum kernel; the metadata is in pyproject.toml.

optional=True: without a C compiler (or Python's headers) the install still
succeeds and ketch.split runs the numpy kernel instead.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ketch._rollsum", ["src/ketch/_rollsum.c"], optional=True)])
