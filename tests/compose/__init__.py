"""The compose check (`make compose-test`): docker-compose.yml built, started and driven on podman."""
