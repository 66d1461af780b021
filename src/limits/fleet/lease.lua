-- keygate fleet-wide limits: one atomic exchange between a sidecar and Redis for one subject
-- (a workspace, or an internal key with limits of its own). See src/limits/fleet/mod.rs for the
-- algorithm and the bound it gives.
--
-- KEYS[1]  hash: burst window, field = 25 ms bucket index, value = admissions charged to it
-- KEYS[2]  hash: sustained window, field = 1 s bucket index
-- KEYS[3]  hash: leases outstanding, field = lease id, value = "<tokens>:<expiry ms>"
-- ARGV[1]  burst limit          ARGV[2] sustained limit
-- ARGV[3]  new lease id ('' when no tokens are wanted)
-- ARGV[4]  tokens needed now, by requests waiting for them: granted while there is any room
-- ARGV[5]  tokens wanted in all (at least ARGV[4]): the rest only while ARGV[6] stays free
-- ARGV[6]  room to leave free for other sidecars' waiting requests
-- ARGV[7]  lease lifetime, ms
-- ARGV[8], ARGV[9], ARGV[10], ...  triples (lease id, tokens used, "age:count,...") of leases
--          this sidecar is done with: `count` of them last used `age` ms before the call was sent
--
-- Returns {granted, burst count, sustained count, burst retry ms, sustained retry ms,
--          burst reset ms, sustained reset ms}; counts include every lease still outstanding.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local burst_limit, sustained_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local BG, BN = 25, 41    -- 41 buckets of 25 ms: any 1 s window lies inside the last 41
local SG, SN = 1000, 61  -- 61 buckets of 1 s: any 60 s window lies inside the last 61

-- Admissions are charged to a bucket no earlier than they happened, so no window ever holds
-- fewer than it should: an age is measured before the call was sent, so `now - age` is after the
-- use.
local function charge(at, n)
  if n > 0 then
    redis.call('HINCRBY', KEYS[1], math.floor(at / BG), n)
    redis.call('HINCRBY', KEYS[2], math.floor(at / SG), n)
  end
end

-- Leases returned: what was used is charged when it was used, the rest is free again. An
-- unknown id (expired and charged already, or lost with Redis's data) is ignored.
for i = 8, #ARGV, 3 do
  local lease = redis.call('HGET', KEYS[3], ARGV[i])
  if lease then
    redis.call('HDEL', KEYS[3], ARGV[i])
    local left = math.min(tonumber(ARGV[i + 1]) or 0, tonumber(string.match(lease, '^(%d+):')) or 0)
    for age, n in string.gmatch(ARGV[i + 2] or '', '(%d+):(%d+)') do
      n = math.min(tonumber(n), left)
      charge(now - math.min(tonumber(age), now), n)
      left = left - n
    end
    charge(now, left)  -- anything the runs did not place
  end
end

-- Leases past their expiry were never returned (a sidecar died or lost Redis): every token is
-- taken as used, at the expiry, the latest moment it could have been. Live ones count in full.
local outstanding = 0
local leases = redis.call('HGETALL', KEYS[3])
for i = 1, #leases, 2 do
  local n, exp = string.match(leases[i + 1], '^(%d+):(%d+)$')
  n, exp = tonumber(n), tonumber(exp)
  if n == nil or exp <= now then
    redis.call('HDEL', KEYS[3], leases[i])
    if n ~= nil then charge(exp, n) end
  else
    outstanding = outstanding + n
  end
end

-- One window: its total, its buckets oldest first, dropping those that have left it.
local function window(key, g, nb)
  local newest = math.floor(now / g)
  local total, buckets = 0, {}
  local h = redis.call('HGETALL', key)
  for i = 1, #h, 2 do
    local b, c = tonumber(h[i]), tonumber(h[i + 1])
    if b == nil or c == nil or b <= newest - nb then
      redis.call('HDEL', key, h[i])
    else
      total = total + c
      buckets[#buckets + 1] = {b, c}
    end
  end
  table.sort(buckets, function(x, y) return x[1] < y[1] end)
  return total, buckets
end

-- When `need` more would fit under `limit` (ms from now), and when the window empties.
local function timing(total, buckets, limit, need, g, nb)
  local retry, reset = 0, 0
  if #buckets > 0 then reset = (buckets[#buckets][1] + nb) * g - now end
  local count = total + outstanding
  if count + need > limit then
    retry = tonumber(ARGV[7])  -- only leases to run out: at most one lifetime
    for _, b in ipairs(buckets) do
      count = count - b[2]
      if count + need <= limit then
        retry = (b[1] + nb) * g - now
        break
      end
    end
  end
  return math.max(retry, 0), math.max(reset, 0)
end

local burst, burst_buckets = window(KEYS[1], BG, BN)
local sustained, sustained_buckets = window(KEYS[2], SG, SN)

local granted = 0
local need, want = tonumber(ARGV[4]), tonumber(ARGV[5])
if ARGV[3] ~= '' and want > 0 then
  local room = math.min(burst_limit - burst, sustained_limit - sustained) - outstanding
  granted = math.max(0, math.min(want, math.max(room - tonumber(ARGV[6]), math.min(need, room))))
  if granted > 0 then
    redis.call('HSET', KEYS[3], ARGV[3], granted .. ':' .. (now + tonumber(ARGV[7])))
    outstanding = outstanding + granted
  end
end

local burst_retry, burst_reset = timing(burst, burst_buckets, burst_limit, 1, BG, BN)
local sustained_retry, sustained_reset =
  timing(sustained, sustained_buckets, sustained_limit, 1, SG, SN)

-- Nothing outlives the longest window plus a lease.
local keep = SN * SG + tonumber(ARGV[7])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], keep) end

return {granted, burst + outstanding, sustained + outstanding,
        burst_retry, sustained_retry, burst_reset, sustained_reset}
