"""The `triage` command and the local stack."""
