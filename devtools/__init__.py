"""Developer tools of the repository (not part of the runtime wheel): ``devtools.deploycheck``
validates the deployment files offline."""
