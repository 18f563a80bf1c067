"""The runtime: requests, the scheduler, KV blocks, sampling, and the connector to the cache service."""
