--[[ enqueue.lua: accept a chunk of entries atomically (DESIGN §3 "Enqueue").

KEYS[1] pending    ZSET  id -> (3 - priority) * 1e13 + enqueued_ms
KEYS[2] payloads   HASH  id -> envelope (opaque JSON; never decoded here)
KEYS[3] seen       ZSET  id -> accepted ms (de-duplication window)
KEYS[4] state      HASH  bytes, size_threshold, wake_ms
KEYS[5] wakeup     LIST  at most one token for the coordinator
KEYS[6] stats      HASH  counters

ARGV[1]  now_ms ('' = Redis TIME)
ARGV[2]  max_buffer_size          ARGV[3]  max_buffer_bytes
ARGV[4]  default size threshold   ARGV[5]  early flush pressure (0..1)
ARGV[6]  adaptive timeout (1/0)   ARGV[7..9] time thresholds ms: normal, high, urgent
ARGV[10] dedupe window ms (0 = only pending/delayed ids are duplicates)
ARGV[11] dedupe max ids (the seen set's cap)
ARGV[12..] triples: id, priority (0..2), envelope

Returns {accepted_count, {duplicate ids}, {rejected ids}, woke (0/1)}.
Every entry is written whole or not at all: ZADD, HSET and the byte gauge move together.
]]
local pending, payloads, seen, state, wakeup, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local max_count, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
local threshold = tonumber(redis.call('HGET', state, 'size_threshold') or ARGV[4])
local early, adaptive = tonumber(ARGV[5]), ARGV[6] == '1'
local thr = {[0] = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])}
local window, max_ids = tonumber(ARGV[10]), tonumber(ARGV[11])

local count = redis.call('ZCARD', pending)
local bytes = tonumber(redis.call('HGET', state, 'bytes') or '0')
local count0, bytes0 = count, bytes
local accepted, dups, rejected = 0, {}, {}
local prios = {}

for i = 12, #ARGV, 3 do
  local id, prio, env = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local dup = redis.call('HEXISTS', payloads, id) == 1
  if not dup and window > 0 then
    local s = redis.call('ZSCORE', seen, id)
    dup = s ~= false and s ~= nil and tonumber(s) >= now - window
  end
  if dup then
    dups[#dups + 1] = id
  elseif count + 1 > max_count or bytes + #env > max_bytes then
    rejected[#rejected + 1] = id
  else
    redis.call('ZADD', pending, string.format('%.0f', (3 - prio) * 1e13 + now), id)
    redis.call('HSET', payloads, id, env)
    if window > 0 and max_ids > 0 then redis.call('ZADD', seen, now, id) end
    count, bytes, accepted = count + 1, bytes + #env, accepted + 1
    prios[prio] = true
  end
end

if accepted > 0 then
  redis.call('HINCRBY', state, 'bytes', bytes - bytes0)
  redis.call('HINCRBY', stats, 'accepted', accepted)
  if window > 0 and max_ids > 0 then
    local over = redis.call('ZCARD', seen) - max_ids
    if over > 0 then redis.call('ZREMRANGEBYRANK', seen, 0, over - 1) end
  end
end
if #dups > 0 then redis.call('HINCRBY', stats, 'duplicates', #dups) end
if #rejected > 0 then redis.call('HINCRBY', stats, 'rejected', #rejected) end

-- Wake the coordinator only when this call may have brought a flush forward.
local function util(c, b) return math.max(c / max_count, b / max_bytes) end
local u0, u1 = util(count0, bytes0), util(count, bytes)
local wake = false
if accepted > 0 then
  local function crossed(level) return u0 < level and u1 >= level end
  wake = (count0 < threshold and count >= threshold) or crossed(0.5) or crossed(early)
  local wake_ms = tonumber(redis.call('HGET', state, 'wake_ms') or '0')
  if not wake then
    local f = 1
    if adaptive and u1 > 0.5 then f = math.max(0.25, 1 - 0.75 * (u1 - 0.5) / (early - 0.5)) end
    for p = 0, 2 do
      if prios[p] and (wake_ms <= 0 or now + thr[p] * f < wake_ms) then wake = true end
    end
    -- a fuller buffer shrinks the deadline of what is already pending
    if not wake and adaptive and u1 > 0.5 and wake_ms > 0 then
      for p = 0, 2 do
        local lo = (3 - p) * 1e13
        local first = redis.call('ZRANGE', pending, string.format('%.0f', lo),
          string.format('%.0f', lo + 1e13 - 1), 'BYSCORE', 'LIMIT', 0, 1, 'WITHSCORES')
        if #first > 0 and tonumber(first[2]) - lo + thr[p] * f < wake_ms then wake = true end
      end
    end
  end
  if wake and redis.call('LLEN', wakeup) == 0 then redis.call('RPUSH', wakeup, '1') end
end

return {accepted, dups, rejected, wake and 1 or 0}
