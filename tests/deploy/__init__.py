"""Tests of the deployment files: Dockerfile, constraints, compose, Prometheus, Grafana, Kubernetes, docs."""
