"""The Lua script that appends one portal's events: dedupe, echo check, XADD, retention.

One call per portal and round trip (:mod:`hubsync.ingress._append` builds its arguments); every
key it touches is under the portal's hash tag, so Redis Cluster keeps them in one slot and the
call is atomic per portal.
"""

from __future__ import annotations

import hashlib

__all__ = ["ENQUEUE_LUA", "ENQUEUE_SHA"]

# KEYS[1] the stream, KEYS[2] the echo journal, then dedupe sets and written-hashes; ARGV: the
# oldest id to keep (MINID), ttl, the stream's byte cap (0: none), one JSON array of events, each
# [set index (0: an echo known by its source, only journaled), member, written index (0: none),
# property, value, entry length, echo record, and for the fields format: traceparent, tracestate,
# origin], the events' entries back to back (compact: serialized JournalEvents; fields: the
# events' JSON), the format ('e' or 'fields'), accepted_ms. One argument for all events: packing
# thousands of small ones costs the client more than the whole script costs Redis. Returns one
# digit per event (a string: one reply to parse, not one per event): 0 accepted, 1 duplicate,
# 2 echo.
#
# Retention: every XADD trims entries older than the retention (MINID ~: whole nodes only, so
# it costs nothing between nodes). Past the byte cap, the oldest entries go too: MEMORY USAGE
# (sampled: a few nodes, O(1) in the stream's length) says how far over, XTRIM MAXLEN ~ cuts
# that share. Both only on a stream the call appended to.
ENQUEUE_LUA = """
local minid = ARGV[1]
local ttl = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local batch = cjson.decode(ARGV[4])
local entries = ARGV[5]
local compact = ARGV[6] == 'e'
local accepted = ARGV[7]
local pos = 1
local added = false
local out = {}
local touched = {}
for i, e in ipairs(batch) do
  local entry = string.sub(entries, pos, pos + e[6] - 1)
  pos = pos + e[6]
  local set = KEYS[e[1]]
  if e[1] == 0 then
    redis.call('XADD', KEYS[2], 'MINID', '~', minid, '*', 'r', e[7])
    out[i] = 2
  elseif redis.call('SADD', set, e[2]) == 0 then
    out[i] = 1
  else
    touched[set] = true
    local echo = false
    if e[3] > 0 then
      local written = redis.call('HGET', KEYS[e[3]], e[4])
      echo = written ~= false and written == e[5]
    end
    if echo then
      redis.call('XADD', KEYS[2], 'MINID', '~', minid, '*', 'r', e[7])
      out[i] = 2
    else
      if compact then
        redis.call('XADD', KEYS[1], 'MINID', '~', minid, '*', 'e', entry)
      else
        local command = {'XADD', KEYS[1], 'MINID', '~', minid, '*', 'event', entry}
        if e[8] ~= '' then
          table.insert(command, 'traceparent')
          table.insert(command, e[8])
        end
        if e[9] ~= '' then
          table.insert(command, 'tracestate')
          table.insert(command, e[9])
        end
        table.insert(command, 'accepted_ms')
        table.insert(command, accepted)
        table.insert(command, 'origin')
        table.insert(command, e[10])
        redis.call(unpack(command))
      end
      added = true
      out[i] = 0
    end
  end
end
for set, _ in pairs(touched) do
  redis.call('EXPIRE', set, ttl)
end
if added and max_bytes > 0 then
  local used = redis.call('MEMORY', 'USAGE', KEYS[1])
  if used and used > max_bytes then
    local length = redis.call('XLEN', KEYS[1])
    redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', math.floor(length * max_bytes / used))
  end
end
return table.concat(out)
"""
ENQUEUE_SHA = hashlib.sha1(ENQUEUE_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts so
