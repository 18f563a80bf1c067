"""The whole stack under one supervisor: cache service, engines and router (``kvtier up``)."""
