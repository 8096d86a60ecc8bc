"""Deployment assets of streamrec (images, compose stack, Kubernetes manifests) and their checker.

``python -m deploy.check_compose`` (console script ``streamrec-check-compose``) validates
docker-compose.yml, the Dockerfiles and deploy/k8s without a Docker engine or a cluster.
"""
