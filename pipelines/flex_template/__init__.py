"""Flex Template tooling: the template registry, generated metadata and images, a local launcher."""
