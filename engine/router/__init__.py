"""The consistent-hashing router in front of engine replicas (``kvtier router``)."""
