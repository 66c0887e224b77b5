#!lua flags=allow-oom
--[[ bookkeeping.lua: run RQ's own bookkeeping commands while Redis is over maxmemory.

KEYS none (non-cluster Redis; RQ's keys span slots anyway)
ARGV    a flat list: argc, command, its arguments, argc, command, ...
Returns one reply per command, in order; a command's error is its reply, as in a pipeline.

Only ``batcher.oom`` sends this, for commands a full Redis refused (see its docstring).
]]
local out, i, n = {}, 1, #ARGV
while i <= n do
  local argc = tonumber(ARGV[i])
  local reply = redis.pcall(unpack(ARGV, i + 1, i + argc))
  if reply == nil then reply = false end
  out[#out + 1] = reply
  i = i + 1 + argc
end
return out
