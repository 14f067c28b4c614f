-- Replays pre-built requests, one per line: host TAB target TAB authorization TAB body
-- (a POST), or @METHOD TAB host TAB target TAB Name:value|Name:value TAB body (a peer's).
-- BENCH_REQUESTS names the file; BENCH_MODE is "once" (signed calls: each nonce is
-- sent at most once; running out stops the thread and is reported) or "cycle"
-- (the unsigned ceiling and logins: the file is replayed in a loop).
-- Each thread takes every n-th line, so no two threads send the same request.
-- done() writes a JSON summary to BENCH_OUT.

local threads = {}

-- A body written "b64:<b64url>" is binary (a sealed call's envelope): decoded once, here, never per request.
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local B64_INDEX = {}
for k = 1, #B64 do B64_INDEX[B64:sub(k, k)] = k - 1 end

local function b64url_decode(text)
   local out, bits, count = {}, 0, 0
   for k = 1, #text do
      bits = bits * 64 + B64_INDEX[text:sub(k, k)]
      count = count + 6
      if count >= 8 then
         count = count - 8
         local byte = math.floor(bits / 2 ^ count)
         out[#out + 1] = string.char(byte)
         bits = bits - byte * 2 ^ count
      end
   end
   return table.concat(out)
end

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

function init(args)
   local total = tonumber(os.getenv("BENCH_THREADS"))
   local cycle_env = os.getenv("BENCH_MODE")
   cycle = (cycle_env == "cycle")
   reqs = {}
   n = 0
   local k = 0
   for line in io.lines(os.getenv("BENCH_REQUESTS")) do
      if k % total == id - 1 then
         local method, peer = "POST", false
         if line:sub(1, 1) == "@" then
            -- A peer's request: @METHOD TAB host TAB target TAB Name:value|Name:value TAB body
            method, line = line:match("^@([A-Z]+)\t(.*)$")
            peer = true
         end
         local host, target, auth, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
         local headers = {["Host"] = host, ["Content-Type"] = "application/json"}
         if peer then
            for name, value in auth:gmatch("([^:|]+):([^|]*)") do headers[name] = value end
         elseif auth ~= "" then
            headers["Authorization"] = auth
         end
         if body == "" then body = nil elseif body:sub(1, 4) == "b64:" then body = b64url_decode(body:sub(5)) end
         n = n + 1
         reqs[n] = wrk.format(method, target, headers, body)
      end
      k = k + 1
   end
   i = 0
   exhausted = 0
   statuses = {}
   filler = wrk.format("GET", "/healthz", {["Host"] = "localhost"}, nil)
end

function request()
   i = i + 1
   if i > n then
      if cycle and n > 0 then
         i = 1
      else
         -- Never replay a nonce: stop this thread and let the report flag the run.
         exhausted = exhausted + 1
         wrk.thread:stop()
         return filler
      end
   end
   return reqs[i]
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local codes = {}
   local total_exhausted, loaded = 0, 0
   for _, t in ipairs(threads) do
      local s = t:get("statuses")
      for code, count in pairs(s) do
         codes[code] = (codes[code] or 0) + count
      end
      total_exhausted = total_exhausted + t:get("exhausted")
      loaded = loaded + t:get("n")
   end
   local parts = {}
   for code, count in pairs(codes) do
      table.insert(parts, string.format('"%d": %d', code, count))
   end
   local e = summary.errors
   local out = io.open(os.getenv("BENCH_OUT"), "w")
   out:write(string.format(
      '{"duration_us": %d, "requests": %d, "bytes": %d, "statuses": {%s}, ' ..
      '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}, ' ..
      '"latency_us": {"mean": %.1f, "stdev": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d}, ' ..
      '"exhausted": %d, "loaded": %d}\n',
      summary.duration, summary.requests, summary.bytes, table.concat(parts, ", "),
      e.connect, e.read, e.write, e.timeout, e.status,
      latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      total_exhausted, loaded))
   out:close()
end
