"""The one compiled part: ``tscam_explain.wsol._levelsets`` (see its source for why).

``optional=True``: without a C compiler the package still installs, and the WSOL sweep falls back
to the per-threshold OpenCV loop, its definition (same results, slower).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("tscam_explain.wsol._levelsets", ["tscam_explain/wsol/_levelsets.c"], optional=True)])
