-- wrk script for bench/run.py. Settings come from the environment:
--   BENCH_TARGETS   file with one "PATH<TAB>APIKEY" line per target; requests cycle through them
--   BENCH_METHOD    HTTP method (default GET)
--   BENCH_BODY      request body, sent as application/json when set
--   BENCH_INTERVAL_MS  when set, each wrk thread starts a request every this many ms, on whichever
--                      of its connections is free, to hold a fixed rate (default: as fast as it can)
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
local interval_ms = tonumber(os.getenv("BENCH_INTERVAL_MS") or "0")
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

if interval_ms > 0 then
  -- A schedule rather than a fixed pause, so the rate does not depend on the server's latency.
  -- Each request takes the thread's next start time. When the server falls behind, requests go
  -- out at once on every connection until the schedule is met again, but never make up for
  -- more than MAX_LAG_MS.
  local MAX_LAG_MS = 1000
  local ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock_id, bench_timespec *time);
  ]]
  local CLOCK_MONOTONIC = 1
  local now = ffi.new("bench_timespec")
  local next_start_ms = nil

  local function monotonic_ms()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, now)
    return tonumber(now.tv_sec) * 1000 + tonumber(now.tv_nsec) / 1e6
  end

  function delay()
    local current_ms = monotonic_ms()
    if next_start_ms == nil or next_start_ms < current_ms - MAX_LAG_MS then
      next_start_ms = current_ms
    end
    local wait_ms = next_start_ms - current_ms
    next_start_ms = next_start_ms + interval_ms
    return math.max(0, math.floor(wait_ms + 0.5))
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("BENCH_RESULT %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    errors.connect + errors.read + errors.write + errors.timeout + errors.status))
end
