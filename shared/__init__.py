"""xray-triage's own library for the serving functions (never imports torch)."""
