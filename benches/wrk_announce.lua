-- wrk script for compare.py: GETs announce paths picked at random from a
-- file (one a line, the argument after --) and counts replies that are not
-- a successful announce (not HTTP 200, or no peer list in the body).
local paths = {}
failures = 0

function init(args)
  for line in io.lines(args[1]) do
    paths[#paths + 1] = line
  end
end

function request()
  return wrk.format("GET", paths[math.random(#paths)])
end

function response(status, headers, body)
  if status ~= 200 or not body:find("5:peers", 1, true) then
    failures = failures + 1
  end
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("failures")
  end
  io.write(string.format("failures: %d\n", total))
end
