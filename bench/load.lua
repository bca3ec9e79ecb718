-- wrk script for bench/run.py. Settings come from the environment:
--   BENCH_TARGETS   file with one "PATH<TAB>APIKEY" line per target; requests cycle through them
--   BENCH_METHOD    HTTP method (default GET)
--   BENCH_BODY      request body, sent as application/json when set
--   BENCH_DELAY_MS  pause before each request on a connection, to hold a lower rate (default 0)
-- done() prints one line that bench/run.py parses: BENCH_RESULT requests duration_us p50_us p99_us errors

local targets = {}
for line in io.lines(os.getenv("BENCH_TARGETS")) do
  local path, key = line:match("^([^\t]+)\t?(.*)$")
  if path then
    targets[#targets + 1] = {path = path, key = key}
  end
end

local method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY")
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local next_index = 1

function setup(thread)
  -- Threads start at different targets so they do not request the same instance in step.
  thread:set("first_index", math.random(#targets))
end

function init(args)
  next_index = first_index or 1
end

function request()
  local target = targets[next_index]
  next_index = next_index % #targets + 1
  local headers = {}
  if target.key ~= "" then
    headers["apikey"] = target.key
  end
  if body then
    headers["Content-Type"] = "application/json"
  end
  return wrk.format(method, target.path, headers, body)
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("BENCH_RESULT %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    errors.connect + errors.read + errors.write + errors.timeout + errors.status))
end
