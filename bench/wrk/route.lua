-- wrk script for bench/run: requests that carry a developer's route key, and a
-- machine-readable summary.
--
--   wrk ... -s route.lua URL -- MODE KEY
--   MODE key    every request: GET /dev/small.txt with `kubernetes-route-as: KEY`
--   MODE mixed  alternately that, and GET /fb/small.txt with no key (fallback)
--
-- The backends serve /dev/ and /fb/ on one side each, so a request that reaches
-- the wrong backend gets a 404 and counts in err_status.
-- done() prints one line `WRKJSON {...}` with counts, errors and latency
-- percentiles in microseconds (p99.9 is not in wrk's own --latency output).

local reqs = {}
local n = 0

function init(args)
  local mode = args[1] or "key"
  local key = args[2] or "alice"
  local dev = wrk.format("GET", "/dev/small.txt", { ["kubernetes-route-as"] = key })
  if mode == "key" then
    reqs = { dev }
  elseif mode == "mixed" then
    reqs = { dev, wrk.format("GET", "/fb/small.txt") }
  else
    error("route.lua: unknown mode " .. mode .. " (want key or mixed)")
  end
end

function request()
  n = n % #reqs + 1
  return reqs[n]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
