"""Deployment assets of streamrec (images, compose stack, Kubernetes manifests, the container
healthcheck script). Not part of the runtime wheel.

Their offline checker is ``devtools.deploycheck`` (``python -m devtools.deploycheck``, or
``python -m deploy.check_compose`` from its former place).
"""
