-- GET the credentials as get.lua does, but every request with a header value no other
-- request carries: imds can send no kept answer (imds.http.fastpath) and works each one out,
-- the cost an SDK meets with a token it has not used before. nginx ignores the header.
local token = os.getenv("IMDS_TOKEN")
local threads = 0
local sent = 0

setup = function(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

request = function()
  sent = sent + 1
  return wrk.format("GET", nil, {
    ["X-aws-ec2-metadata-token"] = token,
    ["X-Request"] = thread_id .. "-" .. sent,
  })
end
