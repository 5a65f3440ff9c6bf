"""The journal that carries every history write from Redis to the SQL store."""
