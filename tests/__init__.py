"""The test suite, a package so that its helpers import by explicit names (``from tests.testkit import ...``)."""
