-- botocore's credential fetch [S-PY-05]: PUT a token, GET the role list, GET the role's
-- credentials; each request carries the newest token this thread has been given.
local token = os.getenv("IMDS_TOKEN")
local role = os.getenv("IMDS_ROLE")
local base = "/latest/meta-data/iam/security-credentials/"
local step = 0

local function get(path)
  return wrk.format("GET", path, {["X-aws-ec2-metadata-token"] = token})
end

request = function()
  step = step % 3 + 1
  if step == 1 then
    return wrk.format("PUT", "/latest/api/token",
                      {["X-aws-ec2-metadata-token-ttl-seconds"] = "21600"})
  elseif step == 2 then
    return get(base)
  end
  return get(base .. role)
end

response = function(status, headers, body)
  -- A token is 56 characters [T-07]; keep the newest so later GETs use a fresh one.
  if status == 200 and #body == 56 then
    token = body
  end
end
