"""Shared helpers of the test suite: real peers (node, Orthanc, DCMTK) and test files.

Fixtures built on these live in ``tests/conftest.py``; tests import the helpers
as ``from helpers.peers import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""
