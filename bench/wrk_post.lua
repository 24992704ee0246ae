-- wrk script for the single POSTs: POST one notification per request, with the API key from the
-- environment (BENCH_API_KEY), and print a JSON summary that bench/ingest.py reads.
-- BENCH_BODY says what each request sends (bench/ingest.py's Body; bench/loadgen.py builds the
-- same): "simple" (default), "order" (an order-shipped email, plain) or "template" (the same
-- from the template BENCH_TEMPLATE), to channel BENCH_CHANNEL (default fake).
local key = os.getenv("BENCH_API_KEY")
local channel = os.getenv("BENCH_CHANNEL") or "fake"
local kind = os.getenv("BENCH_BODY") or "simple"
local template = os.getenv("BENCH_TEMPLATE") or ""

wrk.method = "POST"
wrk.path = "/api/v1/notifications"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

local counter = 0

request = function()
  counter = counter + 1
  local n = counter
  local to = string.format("user%d@example.com", n)
  local body
  if kind == "simple" then
    body = string.format(
      '{"channel":"%s","to":"%s","subject":"Benchmark","message":"benchmark message %d"}', channel, to, n)
  else
    local items, total = n % 9 + 1, string.format("%d.50 EUR", n % 200)
    local url = string.format("https://shop.example.com/track/A-%d", n)
    if kind == "template" then
      body = string.format(
        '{"channel":"%s","to":"%s","template":"%s","data":{"name":"User %d","order_id":"A-%d",' ..
        '"items":%d,"total":"%s","url":"%s"}}', channel, to, template, n, n, items, total, url)
    else
      body = string.format(
        '{"channel":"%s","to":"%s","subject":"Your order A-%d has shipped","message":"Hello User %d,' ..
        '\\n\\nyour order A-%d (%d items, %s) is on its way.\\nTrack it at %s.\\n"}',
        channel, to, n, n, n, items, total, url)
    end
  end
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
