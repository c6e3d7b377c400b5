"""The Lua the Redis backend runs: each script is atomic, so offsets, history and the
announcement of a channel's publications happen in one order every instance sees.

Keys (P = redis.prefix): P:seq (publication counter, orders a gap fill across channels),
P:m:{ch} (hash: e epoch, s offset, b history bytes), P:h:{ch} (stream, ids = offsets),
P:pr:{ch} (hash "instance|key" -> [user_id, username, sockets, key]), P:pu:{ch} (hash key
-> instances it is on), P:pexp (zset of "ch\\ninstance|member" by expiry, ms), P:pch (hash
ch -> presence entries). Pub/sub channel P:p:{ch}.

Every message (pub/sub and stream entry) is `seq|epochs|offsets|ms|json`: epochs and
offsets comma-separated in the order of the publication's channels; seq 0 marks an
ephemeral one (presence, typing), which has neither.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar


class Script:
    """A script's source and SHA1, for EVALSHA; `every` is what a (re)connect loads."""

    every: ClassVar[list[Script]] = []

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        Script.every.append(self)


# KEYS[1] the counter; then per channel i: KEYS[2i] meta, KEYS[2i+1] stream.
# ARGV: pub/sub prefix, epoch seed for channels made now, now (ms), channel count C, then
# 5 per channel (name, size, max_bytes, stream ttl s, meta ttl s), then per publication:
# k, its k channel indexes, its JSON. Returns per channel: epoch, offset before the batch.
PUBLISH = """
local pfx, seed, now, C = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local epochs, tops, names, sizes, caps, result = {}, {}, {}, {}, {}, {}
for i = 1, C do
  local a = 4 + (i - 1) * 5
  names[i], sizes[i], caps[i] = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local meta = redis.call('hmget', KEYS[2 * i], 'e', 's')
  local epoch, top = meta[1], tonumber(meta[2] or '0')
  if not epoch then
    -- A new channel, or one whose state expired: a new epoch, and no stale stream.
    epoch, top = seed .. '.' .. i, 0
    redis.call('hset', KEYS[2 * i], 'e', epoch, 's', 0, 'b', 0, 'c', now)
    redis.call('del', KEYS[2 * i + 1])
  end
  epochs[i], tops[i] = epoch, top
  result[2 * i - 1], result[2 * i] = epoch, top
end
local p, n = 5 + C * 5, #ARGV
while p <= n do
  local k = tonumber(ARGV[p])
  local es, os = {}, {}
  for q = 1, k do
    local i = tonumber(ARGV[p + q])
    tops[i] = tops[i] + 1
    es[q], os[q] = epochs[i], tops[i]
  end
  local seq = redis.call('incr', KEYS[1])
  local msg = seq .. '|' .. table.concat(es, ',') .. '|' .. table.concat(os, ',') .. '|'
    .. now .. '|' .. ARGV[p + k + 1]
  for q = 1, k do
    local i = tonumber(ARGV[p + q])
    local stream = KEYS[2 * i + 1]
    if sizes[i] > 0 then
      if caps[i] > 0 then
        redis.call('xadd', stream, os[q] .. '-0', 'd', msg)
        local b = redis.call('hincrby', KEYS[2 * i], 'b', #msg)
        local len = redis.call('xlen', stream)
        while len > 0 and (len > sizes[i] or b > caps[i]) do
          local old = redis.call('xrange', stream, '-', '+', 'COUNT', 1)
          redis.call('xdel', stream, old[1][1])
          b = redis.call('hincrby', KEYS[2 * i], 'b', -#old[1][2][2])
          len = len - 1
        end
      else
        redis.call('xadd', stream, 'MAXLEN', sizes[i], os[q] .. '-0', 'd', msg)
      end
    end
    redis.call('publish', pfx .. names[i], msg)
  end
  p = p + k + 2
end
for i = 1, C do
  local a = 4 + (i - 1) * 5
  local ttl, meta_ttl = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  redis.call('hset', KEYS[2 * i], 's', tops[i])
  if meta_ttl > 0 then redis.call('expire', KEYS[2 * i], meta_ttl) end
  if sizes[i] > 0 and ttl > 0 then redis.call('expire', KEYS[2 * i + 1], ttl) end
end
return result
"""

# A channel's position, and with ARGV[3] (an offset) the stream after it. Makes the
# channel's state (a new epoch) when there is none, so the epoch a subscriber is told is
# the one the next publication carries. KEYS: meta, stream. ARGV: epoch, meta ttl, since,
# now (ms).
READ = """
local meta = redis.call('hmget', KEYS[1], 'e', 's')
local epoch, top = meta[1], meta[2] or '0'
if not epoch then
  epoch, top = ARGV[1], '0'
  redis.call('hset', KEYS[1], 'e', epoch, 's', 0, 'b', 0, 'c', ARGV[4])
  redis.call('del', KEYS[2])
end
if tonumber(ARGV[2]) > 0 then redis.call('expire', KEYS[1], ARGV[2]) end
if ARGV[3] == '' then return {epoch, top} end
return {epoch, top, redis.call('xrange', KEYS[2], (tonumber(ARGV[3]) + 1) .. '-0', '+')}
"""

# After an outage during which this instance published alone: the channel's state is
# dropped (the next access makes a new epoch) if it dates from before the outage, so no
# client recovers across it as if nothing was missed. State made since (Redis restarted,
# another instance came back first) is left alone. KEYS: meta, stream. ARGV: outage start.
RETIRE = """
local made = redis.call('hget', KEYS[1], 'c')
if made and tonumber(made) < tonumber(ARGV[1]) then redis.call('del', KEYS[1], KEYS[2]) end
return 1
"""

# This instance's entry for a member: written (or refreshed), and when that makes the
# member's first entry anywhere, ARGV[6] is published. KEYS: pr, pu, pexp, pch.
# ARGV: channel, field (instance|member), member, info, expiry (ms), pub/sub name, message.
JOIN = """
if redis.call('hset', KEYS[1], ARGV[2], ARGV[4]) == 1 then
  redis.call('hincrby', KEYS[4], ARGV[1], 1)
  if redis.call('hincrby', KEYS[2], ARGV[3], 1) == 1 then
    redis.call('publish', ARGV[6], ARGV[7])
  end
end
redis.call('zadd', KEYS[3], ARGV[5], ARGV[1] .. '\\n' .. ARGV[2])
return 1
"""

# The entry removed; when it was the member's last anywhere, ARGV[7] is published.
# Same KEYS and ARGV as JOIN.
LEAVE = """
if redis.call('hdel', KEYS[1], ARGV[2]) == 1 then
  redis.call('zrem', KEYS[3], ARGV[1] .. '\\n' .. ARGV[2])
  if redis.call('hincrby', KEYS[4], ARGV[1], -1) <= 0 then redis.call('hdel', KEYS[4], ARGV[1]) end
  if redis.call('hincrby', KEYS[2], ARGV[3], -1) <= 0 then
    redis.call('hdel', KEYS[2], ARGV[3])
    redis.call('publish', ARGV[6], ARGV[7])
  end
end
return 1
"""

# Entries whose instance stopped refreshing them (it died): removed, and `user_left`
# published where that was the member's last entry. Whichever instance runs it first
# does it, once. KEYS: pexp, pch. ARGV: now (ms), key prefix ("P:"), timestamp.
EXPIRE = """
local gone = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, entry in ipairs(gone) do
  local nl = string.find(entry, '\\n', 1, true)
  local channel, field = string.sub(entry, 1, nl - 1), string.sub(entry, nl + 1)
  local member = string.sub(field, string.find(field, '|', 1, true) + 1)
  redis.call('zrem', KEYS[1], entry)
  local pr = ARGV[2] .. 'pr:' .. channel
  local info = redis.call('hget', pr, field)
  if info then
    redis.call('hdel', pr, field)
    if redis.call('hincrby', KEYS[2], channel, -1) <= 0 then
      redis.call('hdel', KEYS[2], channel)
    end
    local pu = ARGV[2] .. 'pu:' .. channel
    if redis.call('hincrby', pu, member, -1) <= 0 then
      redis.call('hdel', pu, member)
      local m = cjson.decode(info)
      local body = cjson.encode({c = {channel}, t = 'user_left', ts = ARGV[3], x = m[4],
        b = {data = {user_id = m[1], username = m[2]}}})
      redis.call('publish', ARGV[2] .. 'p:' .. channel, '0||||' .. body)
    end
  end
end
return #gone
"""
