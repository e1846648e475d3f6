"""The Lua scripts of the shared state: each runs atomically in Redis, in one round trip.

Times are Redis's own (`TIME`), so the cores' clocks need not agree. Needs Redis 6.2 or later
(`SET ... EXAT`, exclusive ranges in `XRANGE`).
"""

from __future__ import annotations

import hashlib

#: Admission: take a lease in the key's set of open streams (members: lease tokens, scores: when
#: each expires, in ms) unless the key holds its limit already, after dropping expired leases; and
#: read the key holder's spend of the period (set to this core's figure when absent: a Redis that
#: lost it starts from the ledger's).
#:
#: KEYS: the lease set (when ARGV[1] is 1), then the spend key (when ARGV[2] is 1).
#: ARGV: lease?, spend?, token, limit, lease ms, spend seed, spend expiry (unix s).
#: Returns {admitted 1/0, leases open before it, spend or ""}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = 1
local admitted, count, spent = 1, 0, ''
if ARGV[1] == '1' then
  local leases = KEYS[k]
  k = k + 1
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  count = redis.call('ZCARD', leases)
  if count < tonumber(ARGV[4]) then
    redis.call('ZADD', leases, now + tonumber(ARGV[5]), ARGV[3])
    redis.call('PEXPIRE', leases, ARGV[5])
  else
    admitted = 0
  end
end
if ARGV[2] == '1' then
  spent = redis.call('GET', KEYS[k])
  if not spent then
    redis.call('SET', KEYS[k], ARGV[6], 'EXAT', ARGV[7])
    spent = ARGV[6]
  end
end
return {admitted, count, spent}
"""

#: A core's open streams of one key, still open: their leases live another lease period (added
#: again if Redis lost them, e.g. after a restart).
#: KEYS: the lease set. ARGV: lease ms, tokens...
REFRESH = """
local t = redis.call('TIME')
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], expires, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

#: What a finished stream cost, added to its key holder's spend of the period; a spend Redis lost
#: (or never had) starts from this core's figure. KEYS: the spend key. ARGV: cost, seed, expiry (unix s).
#: Returns the new spend.
SPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'EXAT', ARGV[3])
end
return redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
"""

#: The replays' new entries, every replay with something new in one call. A replay is a Redis stream:
#: the marker `0-1` holding its writer's token, then chunk i as `{i+1}-0`, the final event as
#: `{final sequence + 1}-0`. Idempotent: entries at or below a stream's last one are skipped (a write
#: whose answer was lost is sent again).
#: KEYS: the replays. ARGV, for each in turn: first write?, writer token, ms to live, MINID to trim
#: to (or ""), entry count n, then n (id, field, value).
#: Returns per replay 1 (written), 0 (the key is another stream's: the same request id), -1 (the
#: replay is gone from Redis: write it again from the start).
APPEND = """
local out = {}
local a = 1
for k = 1, #KEYS do
  local key = KEYS[k]
  local first, token, ttl, minid = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local from = a + 5
  a = from + 3 * tonumber(ARGV[a + 4])
  local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  local result, last = 1, 0
  if #top == 0 then
    if first == '1' then redis.call('XADD', key, '0-1', 'o', token) else result = -1 end
  else
    if first == '1' then
      local marker = redis.call('XRANGE', key, '0-1', '0-1')
      if #marker == 0 or marker[1][2][2] ~= token then result = 0 end
    end
    last = tonumber(string.match(top[1][1], '^(%d+)'))
  end
  if result == 1 then
    for i = from, a - 1, 3 do
      if tonumber(string.match(ARGV[i], '^(%d+)')) > last then
        redis.call('XADD', key, ARGV[i], ARGV[i + 1], ARGV[i + 2])
      end
    end
    if minid ~= '' then redis.call('XTRIM', key, 'MINID', minid) end
    redis.call('PEXPIRE', key, ttl)
  end
  out[k] = result
end
return out
"""


#: Every script, loaded when Redis is reached (again): pipelines send their SHA1 (EVALSHA), not their text.
ALL = (ADMIT, REFRESH, SPEND, APPEND)


def sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


ADMIT_SHA, REFRESH_SHA, SPEND_SHA, APPEND_SHA = (sha(script) for script in ALL)
