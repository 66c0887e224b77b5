#!lua flags=allow-oom
--[[ claim.lua: a worker takes a dispatched batch before calling its handler.

KEYS[1] batch    HASH    KEYS[2] inflight ZSET    KEYS[3] stats HASH
ARGV[1] now_ms ('' = Redis TIME)   ARGV[2] batch id   ARGV[3] attempt   ARGV[4] lease ms
        (job timeout + grace: if the worker dies, the reaper re-dispatches after it)
ARGV[5] claimant token ('' = none): made once per job run, kept in the record's 'claimant'.
        The same token claiming the same attempt again is that worker's retry of a claim
        whose reply it lost: it gets the record back (nothing changes), where any other second
        claim is refused; without this the batch would wait a whole lease for the reaper.

Returns {1}                      claimed (or re-claimed by its claimant); the caller reads the
                                 record (HGETALL) natively in the same MULTI/EXEC: a kilobyte
                                 through Lua costs the server about as much again as the
                                 native read
        {0, 'gone'}              no such batch (already acked or dead-lettered)
        {0, 'stale'}             the attempt was superseded, or is already claimed by another
]]
local batch, inflight, stats = KEYS[1], KEYS[2], KEYS[3]
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local batch_id, attempt, lease_ms, claimant = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]

local meta = redis.call('HMGET', batch, 'attempt', 'status', 'claimant')
if not meta[1] then
  redis.call('HINCRBY', stats, 'stale_claims', 1)
  return {0, 'gone'}
end
if meta[1] == attempt and meta[2] == 'claimed' and claimant ~= '' and meta[3] == claimant then
  return {1}
end
if meta[1] ~= attempt or meta[2] ~= 'dispatched' then
  redis.call('HINCRBY', stats, 'stale_claims', 1)
  return {0, 'stale'}
end
redis.call('HSET', batch, 'status', 'claimed', 'claimed_ms', string.format('%.0f', now),
  'claimant', claimant)
redis.call('ZADD', inflight, string.format('%.0f', now + lease_ms), batch_id)
return {1}
