"""Taking a job off a Redis queue and recording it unacknowledged in one step.

kombu's Redis consumer takes a message with ``BRPOP`` and records it in
``unacked`` afterwards, in a second command: a worker killed, or a broker that
crashes, between the two loses the message. An ESF channel takes with one Lua
script instead: it pops the first message of the consumer's queues, in
kombu's order (every queue's highest priority first) and records it in
``unacked`` and ``unacked_index`` in the same step, exactly as kombu's
``QoS.append`` would. What the script took is in ``unacked`` from the moment
it left the list, and the restore sweep gives it back if its consumer dies.

A script cannot block, so an idle consumer waits elsewhere: every publish
also pushes a wake-up token on the queue's wake list (``<queue>\\x06\\x16wake``,
one token at most, expiring after :data:`WAKE_TTL_MS`), and an idle consumer
waits on its queues' wake lists with ``BRPOP``. A token carries no message: a
consumer killed holding one loses nothing. Whatever wakes it (a token, or
the ``BRPOP`` timeout), the consumer then takes; after a take that found a
message it takes again at once, and waits only when its queues are empty. A
take that leaves messages behind pushes a token, so idle consumers of the same
queue wake one another. A message pushed by a producer that pushes no token (not
an ESF app) is taken within the consumer's ``brpop_timeout`` (one second by
default).
"""

from __future__ import annotations

from typing import Any

#: How long a wake-up token outlives its last push; a queue deleted leaves none behind for longer.
WAKE_TTL_MS = 60_000
#: The suffix of a queue's wake list, after kombu's priority separator.
WAKE_SUFFIX = "wake"

# KEYS: unacked, unacked_index, the queue keys (priority-major, kombu's BRPOP order), one wake key per queue.
# ARGV: now, number of queues, number of priority steps, wake TTL (ms), then per queue '1' to record the
# message unacknowledged (a consumer that acknowledges) or '0' (no_ack).
# Returns {position of the key (1-based), message}, or nil.
# On a full ``noeviction`` Redis a take still runs, as BRPOP does: its first write, the pop, frees memory, and
# Redis lets a script that has written finish.
TAKE_SCRIPT = """
local nqueues, nsteps = tonumber(ARGV[2]), tonumber(ARGV[3])
local wakes = 2 + nqueues * nsteps
for step = 0, nsteps - 1 do
  for q = 1, nqueues do
    local position = step * nqueues + q
    local item = redis.call('RPOP', KEYS[2 + position])
    if item then
      if ARGV[4 + q] == '1' then
        local ok, message = pcall(cjson.decode, item)
        local properties = ok and type(message) == 'table' and message['properties']
        if type(properties) == 'table' then
          local tag, info = properties['delivery_tag'], properties['delivery_info']
          if (type(tag) == 'string' or type(tag) == 'number') and type(info) == 'table' then
            redis.call('ZADD', KEYS[2], ARGV[1], tag)
            redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ','
                       .. cjson.encode(info['routing_key']) .. ']')
          end
        end
      end
      for other = 0, nsteps - 1 do
        if redis.call('LLEN', KEYS[2 + other * nqueues + q]) > 0 then
          local wake = KEYS[wakes + q]
          redis.call('LPUSH', wake, '1')
          redis.call('LTRIM', wake, 0, 0)
          redis.call('PEXPIRE', wake, ARGV[4])
          break
        end
      end
      return {position, item}
    end
  end
end
return false
"""

def script_sha(script: str) -> str:
    import hashlib

    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis names scripts by their SHA-1


class Take:
    """The take script on a Redis server: ``EVALSHA``, and ``EVAL`` (which loads it) when the server lacks it."""

    script = TAKE_SCRIPT
    sha = script_sha(TAKE_SCRIPT)

    def command(self, keys: list[str], args: list[Any]) -> list[Any]:
        """The ``EVALSHA`` command, to send on a connection."""
        return ["EVALSHA", self.sha, len(keys), *keys, *args]

    def run(self, client: Any, connection: Any, keys: list[str], args: list[Any]) -> Any:
        """Send the take on ``connection`` (idle) and read its reply; keys are sent as given (prefixed)."""
        connection.send_command(*self.command(keys, args))
        return self.read(client, connection, keys, args)

    def read(self, client: Any, connection: Any, keys: list[str], args: list[Any], **options: Any) -> Any:
        """Read the reply of a take sent on ``connection``; run it with ``EVAL`` when the server lacked it."""
        import redis

        try:
            return client.parse_response(connection, "EVALSHA", **options)
        except redis.exceptions.NoScriptError:
            connection.send_command("EVAL", self.script, len(keys), *keys, *args)
            return client.parse_response(connection, "EVAL")

    def call(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        """Run the take through ``client``'s pool; keys are sent as given (prefixed)."""
        import redis

        try:
            return redis.Redis.execute_command(client, *self.command(keys, args))
        except redis.exceptions.NoScriptError:
            return redis.Redis.execute_command(client, "EVAL", self.script, len(keys), *keys, *args)
