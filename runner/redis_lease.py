"""A lease in Redis: one holder at a time across processes, renewed while it works, expiring when it dies."""

from __future__ import annotations

import redis

# KEYS[1]: the lease; ARGV[1]: our name, ARGV[2]: milliseconds. Take the lease when free, or renew it when ours.
_TAKE_OR_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# KEYS[1]: the lease; ARGV[1]: our name. Give the lease back if we hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """The lease `key`, as `holder` takes, keeps and gives it back; it lasts `seconds` unless renewed."""

    def __init__(self, connection: redis.Redis, key: str, holder: str, seconds: float) -> None:
        self.key = key
        self.holder = holder
        self.seconds = seconds
        self._take_or_renew = connection.register_script(_TAKE_OR_RENEW)
        self._release = connection.register_script(_RELEASE)

    def hold(self) -> bool:
        """Take the lease, or keep it; whether we hold it now. Raises Redis errors."""
        return bool(self._take_or_renew(keys=[self.key], args=[self.holder, int(self.seconds * 1000)]))

    def release(self) -> None:
        """Give the lease back (at exit), so another holder takes over at once."""
        self._release(keys=[self.key], args=[self.holder])
