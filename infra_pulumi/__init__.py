"""Pulumi program: Chameleon/OpenStack VMs, k3s, Knative, MinIO, MLflow, monitoring, the functions."""
