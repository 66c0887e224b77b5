--[[ budget.lua: token buckets shared by every worker, one budget per name (issue 17 item 3).

KEYS[1] budget HASH: limit_<b> (per minute, set by an operator; 0 = no limit),
        plimit_<b> (the limit the provider reported, when lower), lvl_<b> (tokens left),
        ts (ms of the last refill), for buckets b = req (requests), in (input tokens),
        out (output tokens); and counters reserved_<b>, waits, settled.
ARGV[1] op: 'reserve' | 'settle' | 'set' | 'peek'
ARGV[2] now_ms ('' = Redis TIME)
reserve: ARGV[3..5] wanted req, in, out.
         Returns {1, 0} (taken) or {0, wait_ms} (nothing taken: retry after wait_ms).
         A want larger than a whole minute's limit is taken when that bucket is full.
settle:  ARGV[3..5] actual minus reserved (negative = refund) for req, in, out;
         ARGV[6..8] the provider's remaining req, in, out ('' = not reported);
         ARGV[9..11] the provider's limit per minute for req, in, out ('' = not reported).
         A provider that reports less left, or a lower limit, tightens the bucket. Returns {1}.
set:     ARGV[3..5] limit per minute for req, in, out (0 = none); levels are clamped. Returns {1}.
peek:    Returns the hash, after the refill, as a flat field/value list.
Every bucket refills continuously at limit / 60,000 ms, up to one minute's worth.
]]
local key = KEYS[1]
local op = ARGV[1]
local now
if ARGV[2] ~= '' then now = tonumber(ARGV[2]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local B = {'req', 'in', 'out'}
local function num(v, default) return tonumber(v) or default end
local h = {}
do
  local raw = redis.call('HGETALL', key)
  for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
end
local function fmt(x) return string.format('%.17g', x) end

-- the limit in force: the operator's, or the provider's when it reported a lower one
local function limit(b)
  local l, p = num(h['limit_' .. b], 0), num(h['plimit_' .. b], 0)
  if l > 0 and p > 0 then return math.min(l, p) end
  return l
end

local last = num(h['ts'], now)
local lvl = {}
for _, b in ipairs(B) do
  local l = limit(b)
  if l > 0 then
    local v = num(h['lvl_' .. b], l)
    lvl[b] = math.min(l, v + l * math.max(0, now - last) / 60000)
  end
end
local function save()
  local out = {'ts', fmt(now)}
  for _, b in ipairs(B) do
    if lvl[b] then out[#out + 1] = 'lvl_' .. b; out[#out + 1] = fmt(lvl[b]) end
  end
  redis.call('HSET', key, unpack(out))
end

if op == 'reserve' then
  local want = {req = num(ARGV[3], 0), ['in'] = num(ARGV[4], 0), out = num(ARGV[5], 0)}
  local wait = 0
  for _, b in ipairs(B) do
    local l = limit(b)
    if l > 0 then
      local need = math.min(want[b], l)
      if lvl[b] < need then wait = math.max(wait, math.ceil((need - lvl[b]) * 60000 / l)) end
    end
  end
  if wait > 0 then
    save()
    redis.call('HINCRBY', key, 'waits', 1)
    return {0, wait}
  end
  for _, b in ipairs(B) do
    if lvl[b] then lvl[b] = lvl[b] - want[b] end
  end
  save()
  return {1, 0}
elseif op == 'settle' then
  for i, b in ipairs(B) do
    local delta, remaining, plimit = tonumber(ARGV[2 + i]), tonumber(ARGV[5 + i]), tonumber(ARGV[8 + i])
    if plimit and plimit > 0 then
      if num(h['limit_' .. b], 0) > 0 and plimit < num(h['limit_' .. b], 0) then
        redis.call('HSET', key, 'plimit_' .. b, fmt(plimit))
        h['plimit_' .. b] = fmt(plimit)
      elseif h['plimit_' .. b] then
        redis.call('HDEL', key, 'plimit_' .. b)
        h['plimit_' .. b] = nil
      end
    end
    if lvl[b] then
      if delta then lvl[b] = lvl[b] - delta end
      if remaining then lvl[b] = math.min(lvl[b], remaining) end
      lvl[b] = math.min(lvl[b], limit(b))
    end
  end
  save()
  redis.call('HINCRBY', key, 'settled', 1)
  return {1}
elseif op == 'set' then
  for i, b in ipairs(B) do
    local l = num(ARGV[2 + i], 0)
    redis.call('HSET', key, 'limit_' .. b, fmt(l))
    h['limit_' .. b] = fmt(l)
    if l > 0 then lvl[b] = math.min(lvl[b] or l, limit(b))
    else lvl[b] = nil; redis.call('HDEL', key, 'lvl_' .. b, 'plimit_' .. b) end
  end
  save()
  return {1}
elseif op == 'peek' then
  save()
  return redis.call('HGETALL', key)
end
return redis.error_reply('budget: unknown op ' .. tostring(op))
