"""The reliability suite (marker ``reliability``): daemon plants on shared folders (``tests.reliability.plant``)."""
