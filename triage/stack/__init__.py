"""Local stand-ins for MinIO notifications, Knative Eventing and routing, plus process supervision."""
