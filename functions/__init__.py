"""One folder per scale-to-zero function (functions-framework targets)."""
