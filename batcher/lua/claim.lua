#!lua flags=allow-oom
--[[ claim.lua: a worker takes a dispatched batch before calling its handler.

KEYS[1] batch    HASH    KEYS[2] inflight ZSET    KEYS[3] stats HASH
ARGV[1] now_ms ('' = Redis TIME)   ARGV[2] batch id   ARGV[3] attempt   ARGV[4] lease ms
        (job timeout + grace: if the worker dies, the reaper re-dispatches after it)

Returns {1}                      claimed; the caller reads the record (HGETALL) natively in
                                 the same MULTI/EXEC: a kilobyte through Lua costs the server
                                 about as much again as the native read
        {0, 'gone'}              no such batch (already acked or dead-lettered)
        {0, 'stale'}             the attempt was superseded, or is already claimed
]]
local batch, inflight, stats = KEYS[1], KEYS[2], KEYS[3]
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local batch_id, attempt, lease_ms = ARGV[2], ARGV[3], tonumber(ARGV[4])

local meta = redis.call('HMGET', batch, 'attempt', 'status')
if not meta[1] then
  redis.call('HINCRBY', stats, 'stale_claims', 1)
  return {0, 'gone'}
end
if meta[1] ~= attempt or meta[2] ~= 'dispatched' then
  redis.call('HINCRBY', stats, 'stale_claims', 1)
  return {0, 'stale'}
end
redis.call('HSET', batch, 'status', 'claimed', 'claimed_ms', string.format('%.0f', now))
redis.call('ZADD', inflight, string.format('%.0f', now + lease_ms), batch_id)
return {1}
