-- wrk script for scripts/bench-load.sh: every request carries `Authorization: Bearer <key>`,
-- cycling through all the secrets in the file named after `--` (one a line), so the load is
-- spread over every key and workspace. The requests are formatted once, in `init`, so that
-- wrk spends no time building them. Targets that do not authenticate ignore the header.
--
--   wrk -t1 -c32 -d15s --latency -s scripts/bench/keys.lua http://127.0.0.1:8080/v1/products -- SECRETS

local requests = {}
local count = 0
local next_index = 0

function init(args)
  local path = args[1]
  if path == nil then
    error("usage: wrk ... -s keys.lua URL -- SECRETS_FILE")
  end
  for line in io.lines(path) do
    if line ~= "" then
      count = count + 1
      -- nil method and path: wrk's own (GET, the URL's path); wrk adds the Host header.
      requests[count] = wrk.format(nil, nil, { Authorization = "Bearer " .. line })
    end
  end
  if count == 0 then
    error("no secrets in " .. path)
  end
end

function request()
  next_index = next_index % count + 1
  return requests[next_index]
end
