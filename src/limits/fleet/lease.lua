-- keygate fleet-wide limits: one atomic exchange between a sidecar and Redis for one subject
-- (a workspace, or an internal key with limits of its own). See src/limits/fleet/mod.rs for the
-- algorithm and the bound it gives.
--
-- KEYS[1]  hash: burst window, field = 25 ms bucket index, value = admissions charged to it;
--          fields 't', 'o', 'n' = the buckets' total, the oldest bucket still in the window,
--          the newest bucket charged
-- KEYS[2]  hash: sustained window, field = 1 s bucket index; 't', 'o', 'n' likewise
-- KEYS[3]  hash: leases outstanding, field = lease id, value = "<tokens>:<expiry ms>"
-- ARGV[1]  burst limit          ARGV[2] sustained limit
-- ARGV[3]  new lease id ('' when no tokens are wanted)
-- ARGV[4]  tokens needed now, by requests waiting for them: granted while there is any room
-- ARGV[5]  tokens wanted in all (at least ARGV[4]): the rest only while ARGV[6] stays free
-- ARGV[6]  room to leave free for other sidecars' waiting requests
-- ARGV[7]  the new lease's lifetime, ms
-- ARGV[8]  the longest lifetime any lease may have, ms
-- ARGV[9], ARGV[10], ARGV[11], ...  triples (lease id, tokens used, "age:count,...") of leases
--          this sidecar is done with: `count` of them last used `age` ms before the call was sent
--
-- Returns {granted, burst count, sustained count, burst retry ms, sustained retry ms,
--          burst reset ms, sustained reset ms}; counts include every lease still outstanding.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local burst_limit, sustained_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local BG, BN = 25, 41    -- 41 buckets of 25 ms: any 1 s window lies inside the last 41
local SG, SN = 1000, 61  -- 61 buckets of 1 s: any 60 s window lies inside the last 61

-- One window, kept with a running total so that a call costs what expired since the last one,
-- not every bucket: buckets older than the last `nb` leave it (and its total) here.
local function window(key, g, nb)
  local newest = math.floor(now / g)
  local cutoff = newest - nb  -- this bucket and older have left the window
  local meta = redis.call('HMGET', key, 't', 'o', 'n')
  local total, oldest, charged = tonumber(meta[1]), tonumber(meta[2]), tonumber(meta[3])
  if total == nil or oldest == nil or oldest > newest + 1 then
    -- New, or not ours (garbage, or a clock that went back a long way): start afresh.
    redis.call('DEL', key)
    total, oldest = 0, cutoff + 1
  elseif oldest <= cutoff then
    if cutoff - oldest >= nb - 1 then
      -- Charges go to buckets no later than the one `now` is in, so none here is newer than
      -- oldest + nb - 1: with that at or before the cutoff, they are all gone at once.
      redis.call('DEL', key)
      total = 0
    else
      local fields = {}
      for b = oldest, cutoff do fields[#fields + 1] = b end
      for _, c in ipairs(redis.call('HMGET', key, unpack(fields))) do
        total = total - (tonumber(c) or 0)
      end
      redis.call('HDEL', key, unpack(fields))
      total = math.max(total, 0)
    end
    oldest = cutoff + 1
  end
  if total == 0 then charged = nil end
  return {key = key, g = g, nb = nb, total = total, oldest = oldest, newest = charged, pending = {}}
end

local burst_w = window(KEYS[1], BG, BN)
local sustained_w = window(KEYS[2], SG, SN)

-- Admissions are charged to a bucket no earlier than they happened, so no window ever holds
-- fewer than it should: an age is measured before the call was sent, so `now - age` is after the
-- use. A bucket that has already left a window can no longer weigh on it and is not charged.
local function charge(at, n)
  if n > 0 then
    for _, w in ipairs({burst_w, sustained_w}) do
      local b = math.floor(at / w.g)
      if b >= w.oldest then
        w.pending[b] = (w.pending[b] or 0) + n
        w.total = w.total + n
        if w.newest == nil or b > w.newest then w.newest = b end
      end
    end
  end
end

-- Leases returned: what was used is charged when it was used, the rest is free again. An
-- unknown id (expired and charged already, or lost with Redis's data) is ignored.
for i = 9, #ARGV, 3 do
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
local first_expiry = nil  -- when the first outstanding lease is charged or back, at the latest
local leases = redis.call('HGETALL', KEYS[3])
for i = 1, #leases, 2 do
  local n, exp = string.match(leases[i + 1], '^(%d+):(%d+)$')
  n, exp = tonumber(n), tonumber(exp)
  if n == nil or exp <= now then
    redis.call('HDEL', KEYS[3], leases[i])
    if n ~= nil then charge(exp, n) end
  else
    outstanding = outstanding + n
    if first_expiry == nil or exp < first_expiry then first_expiry = exp end
  end
end

-- The charges, a bucket at a time, and the window's running figures: one read and one write
-- per window, however many uses were returned.
for _, w in ipairs({burst_w, sustained_w}) do
  local fields, adds = {}, {}
  for b, n in pairs(w.pending) do
    fields[#fields + 1] = b
    adds[#adds + 1] = n
  end
  local set = {'t', w.total, 'o', w.oldest, 'n', w.newest or w.oldest}
  if #fields > 0 then
    local current = redis.call('HMGET', w.key, unpack(fields))
    for i, b in ipairs(fields) do
      set[#set + 1] = b
      set[#set + 1] = (tonumber(current[i]) or 0) + adds[i]
    end
  end
  redis.call('HSET', w.key, unpack(set))
end

-- When `need` more would fit under the window's limit (ms from now), and when it empties.
local function timing(w, limit, need)
  local retry, reset = 0, 0
  if w.total > 0 and w.newest then reset = (w.newest + w.nb) * w.g - now end
  local count = w.total + outstanding
  if count + need > limit then
    -- Past the buckets, only leases can make room: the first comes back by its expiry.
    retry = (first_expiry or now) - now
    -- Only here does the answer need every bucket, oldest first: most calls are far from a
    -- limit.
    local buckets = {}
    local h = redis.call('HGETALL', w.key)
    for i = 1, #h, 2 do
      local b, c = tonumber(h[i]), tonumber(h[i + 1])
      if b ~= nil and c ~= nil then buckets[#buckets + 1] = {b, c} end
    end
    table.sort(buckets, function(x, y) return x[1] < y[1] end)
    for _, b in ipairs(buckets) do
      count = count - b[2]
      if count + need <= limit then
        retry = (b[1] + w.nb) * w.g - now
        break
      end
    end
  end
  return math.max(retry, 0), math.max(reset, 0)
end

local granted = 0
local need, want = tonumber(ARGV[4]), tonumber(ARGV[5])
if ARGV[3] ~= '' and want > 0 then
  local room = math.min(burst_limit - burst_w.total, sustained_limit - sustained_w.total) - outstanding
  granted = math.max(0, math.min(want, math.max(room - tonumber(ARGV[6]), math.min(need, room))))
  if granted > 0 then
    local exp = now + tonumber(ARGV[7])
    redis.call('HSET', KEYS[3], ARGV[3], granted .. ':' .. exp)
    outstanding = outstanding + granted
    if first_expiry == nil or exp < first_expiry then first_expiry = exp end
  end
end

local burst_retry, burst_reset = timing(burst_w, burst_limit, 1)
local sustained_retry, sustained_reset = timing(sustained_w, sustained_limit, 1)

-- Nothing outlives the longest window plus a lease.
local keep = SN * SG + tonumber(ARGV[8])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], keep) end

return {granted, burst_w.total + outstanding, sustained_w.total + outstanding,
        burst_retry, sustained_retry, burst_reset, sustained_reset}
