"""The Lua scripts of the shared state: each runs atomically in Redis, in one round trip.

Times are Redis's own (`TIME`), so the cores' clocks need not agree. Needs Redis 6.2 or later
(`SET ... EXAT`, exclusive ranges in `XRANGE`).
"""

from __future__ import annotations

#: Admission: take a lease in the key's set of open streams (members: lease tokens, scores: when
#: each expires, in ms) unless the key holds its limit already, after dropping expired leases and the
#: ones this core has released but not yet removed; and read the key holder's spend of the period
#: (set to this core's figure when absent: a Redis that lost it starts from the ledger's).
#:
#: KEYS: the lease set (when ARGV[1] is 1), then the spend key (when ARGV[2] is 1).
#: ARGV: lease?, spend?, token, limit, lease ms, spend seed, spend expiry (unix s), released tokens...
#: Returns {admitted 1/0, leases open before it, spend or ""}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = 1
local admitted, count, spent = 1, 0, ''
if ARGV[1] == '1' then
  local leases = KEYS[k]
  k = k + 1
  for i = 8, #ARGV do redis.call('ZREM', leases, ARGV[i]) end
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

#: A replay's new entries (a Redis stream: the marker `0-1` holding its writer's token, then chunk i
#: as `{i+1}-0`, the final event as `{final sequence + 1}-0`). Idempotent: entries at or below the
#: stream's last one are skipped (a write whose answer was lost may be sent again).
#: KEYS: the replay. ARGV: first write?, writer token, ms to live, MINID to trim to (or ""), then
#: (id, field, value) per entry.
#: Returns 1 (written), 0 (the key is another stream's: the same request id), -1 (the replay is
#: gone from Redis: write it again from the start).
APPEND = """
local key = KEYS[1]
local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
local last
if #top == 0 then
  if ARGV[1] ~= '1' then return -1 end
  redis.call('XADD', key, '0-1', 'o', ARGV[2])
  last = 0
else
  if ARGV[1] == '1' then
    local first = redis.call('XRANGE', key, '0-1', '0-1')
    if #first == 0 or first[1][2][2] ~= ARGV[2] then return 0 end
  end
  last = tonumber(string.match(top[1][1], '^(%d+)'))
end
for i = 5, #ARGV, 3 do
  if tonumber(string.match(ARGV[i], '^(%d+)')) > last then
    redis.call('XADD', key, ARGV[i], ARGV[i + 1], ARGV[i + 2])
  end
end
if ARGV[4] ~= '' then redis.call('XTRIM', key, 'MINID', ARGV[4]) end
redis.call('PEXPIRE', key, ARGV[3])
return 1
"""
