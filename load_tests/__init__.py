"""Load tests and benchmarks (`triage loadtest`, `triage bench`)."""
