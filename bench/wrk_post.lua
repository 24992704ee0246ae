-- wrk script for ingest_single_per_s: POST one notification per request, with the API key
-- from the environment (BENCH_API_KEY), and print a JSON summary that bench/ingest.py reads.
local key = os.getenv("BENCH_API_KEY")
local channel = os.getenv("BENCH_CHANNEL") or "fake"

wrk.method = "POST"
wrk.path = "/api/v1/notifications"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

local counter = 0

request = function()
  counter = counter + 1
  local body = string.format(
    '{"channel":"%s","to":"user%d@example.com","subject":"Benchmark","message":"benchmark message %d"}',
    channel, counter, counter)
  return wrk.format(nil, nil, nil, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
