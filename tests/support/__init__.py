"""What the tests share: harnesses, builders of expected values, data corpora.

Test modules import from here (`from tests.support.dag_harness import ...`), never from one
another; the fixtures they share live in `tests/conftest.py`.
"""
